/* Unit tests for gpuhostctl's device table and "top" frame
 * (daemon/gpuhostctl/devtable.c, cmd-top.c): the VRAM bar at its edges,
 * a Device read from a GetStatus reply in the current form ("memory",
 * counts, models) and in the older one (memory_total, pool), the table
 * byte for byte (names with control characters, long names and model
 * lists cut), and a whole frame of "top". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gpuhostctl/ctl.h"

#define NOW_USEC INT64_C(1700000000000000)
#define GIB "1073741824"

static void expect_bar(int64_t used, int64_t budget, int width, const char *want) {
        char buf[256];

        assert_int_equal(ctl_vram_bar(buf, sizeof(buf), used, budget, width), (int) strlen(want));
        if (strcmp(buf, want) != 0)
                print_error("bar(%lld, %lld, %d) = '%s', wanted '%s'\n", (long long) used, (long long) budget, width,
                            buf, want);
        assert_string_equal(buf, want);
}

static void test_vram_bar(void **state) {
        char buf[300], small[6];

        expect_bar(0, 100, 10, "[..........]");
        expect_bar(1, 100, 10, "[#.........]");   /* anything used shows */
        expect_bar(50, 100, 10, "[#####.....]");
        expect_bar(54, 100, 10, "[#####.....]");
        expect_bar(55, 100, 10, "[######....]");  /* rounded to the nearest cell */
        expect_bar(99, 100, 10, "[#########.]");  /* full only when it is */
        expect_bar(100, 100, 10, "[##########]");
        expect_bar(250, 100, 10, "[##########]");
        expect_bar(50, 0, 10, "[..........]");    /* no budget */
        expect_bar(50, -5, 10, "[..........]");
        expect_bar(-50, 100, 10, "[..........]");
        expect_bar(INT64_MAX, INT64_MAX, 4, "[####]");
        expect_bar(INT64_MAX / 2, INT64_MAX, 4, "[##..]");
        expect_bar(5, 10, 0, "[]");
        expect_bar(5, 10, -3, "[]");
        expect_bar(1, 3, 1, "[#]"); /* one cell: anything used shows */
        assert_int_equal(ctl_vram_bar(buf, sizeof(buf), 1, 2, 1000), 202); /* width capped at 200 */
        /* A short buffer is cut, NUL-terminated. */
        assert_int_equal(ctl_vram_bar(small, sizeof(small), 5, 10, 10), 12);
        assert_string_equal(small, "[####");
}

static void test_device_row(void **state) {
        json_object *d = json_tokener_parse(
                "{\"index\": 2, \"kind\": \"cuda\", \"name\": \"NVIDIA H200\","
                " \"memory\": {\"total\": 100, \"reserve\": 10, \"weights\": 30, \"workspaces\": 20, \"free\": 40},"
                " \"units\": 8, \"units_busy\": 3, \"running\": 2, \"queued\": 5, \"models\": [\"sd15\"],"
                " \"memory_total\": 999, \"pool\": {\"used\": 999}}");
        ctl_device_row r;

        assert_non_null(d);
        ctl_device_row_from_json(d, &r);
        assert_int_equal(r.index, 2);
        assert_string_equal(r.name, "NVIDIA H200");
        assert_int_equal(r.total, 100);
        assert_int_equal(r.reserve, 10);
        assert_int_equal(r.weights, 30);
        assert_int_equal(r.workspaces, 20);
        assert_int_equal(r.free, 40);
        assert_int_equal(r.budget, 90); /* total - reserve */
        assert_int_equal(r.units, 8);
        assert_int_equal(r.units_busy, 3);
        assert_int_equal(r.running, 2);
        assert_int_equal(r.queued, 5);
        assert_non_null(r.models);
        assert_int_equal(json_object_array_length(r.models), 1);
        json_object_put(d);

        /* A daemon without the "memory" object: the older fields. */
        d = json_tokener_parse("{\"index\": 0, \"kind\": \"cpu\", \"name\": \"cpu\", \"memory_total\": 64,"
                               " \"memory_reserve\": 4, \"memory_free\": 32, \"pool\": {\"used\": 16},"
                               " \"running\": null, \"models\": \"not an array\"}");
        assert_non_null(d);
        ctl_device_row_from_json(d, &r);
        assert_int_equal(r.total, 64);
        assert_int_equal(r.reserve, 4);
        assert_int_equal(r.weights, 16);
        assert_int_equal(r.workspaces, 0);
        assert_int_equal(r.free, 32);
        assert_int_equal(r.budget, 60);
        assert_int_equal(r.units, -1);
        assert_int_equal(r.units_busy, -1);
        assert_int_equal(r.running, -1);
        assert_int_equal(r.queued, -1);
        assert_null(r.models);
        json_object_put(d);

        /* The daemon's own budget, when it sends one. */
        d = json_tokener_parse("{\"memory\": {\"total\": 100, \"reserve\": 10, \"budget\": 64}}");
        ctl_device_row_from_json(d, &r);
        assert_int_equal(r.budget, 64);
        json_object_put(d);
        d = json_tokener_parse("{\"memory\": {\"total\": 10, \"reserve\": 20}}");
        ctl_device_row_from_json(d, &r);
        assert_int_equal(r.budget, 0);
        json_object_put(d);

        /* Nothing at all. */
        d = json_object_new_object();
        ctl_device_row_from_json(d, &r);
        assert_int_equal(r.index, 0);
        assert_string_equal(r.name, "?");
        assert_int_equal(r.total, 0);
        assert_int_equal(r.running, -1);
        json_object_put(d);
}

static char *table_to_string(const char *json) {
        json_object *o = json_tokener_parse(json);
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);

        assert_non_null(f);
        ctl_devices_table_print(f, o);
        assert_int_equal(fclose(f), 0);
        json_object_put(o);
        return text;
}

static void expect_text(char *text, const char *want) {
        if (strcmp(text, want) != 0)
                print_error("got:\n%s\nwanted:\n%s\n", text, want);
        assert_string_equal(text, want);
        free(text);
}

static void test_devices_table(void **state) {
        /* Device 0: 140 GiB, 1 GiB reserve, 20 GiB of weights and 8 GiB of
         * workspaces; device 2 as an older daemon describes it. */
        static const char json[] =
                "[{\"index\": 0, \"kind\": \"cuda\", \"name\": \"NVIDIA H200\","
                "  \"memory\": {\"total\": 150323855360, \"reserve\": " GIB ", \"weights\": 21474836480,"
                "  \"workspaces\": 8589934592, \"free\": 100000000000},"
                "  \"units\": 8, \"units_busy\": 2, \"running\": 2, \"queued\": 1, \"models\": [\"sd15\", \"sdxl\"]},"
                " {\"index\": 1, \"kind\": \"cpu\", \"name\": \"cpu\","
                "  \"memory\": {\"total\": 8589934592, \"reserve\": 0, \"weights\": 0, \"workspaces\": 0,"
                "  \"free\": 8589934592}, \"running\": 0, \"queued\": 0, \"models\": []},"
                " {\"index\": 2, \"kind\": \"cuda\", \"name\": \"old\\u001b[2Jgpu\", \"memory_total\": 17179869184,"
                "  \"memory_reserve\": " GIB ", \"memory_free\": 0, \"pool\": {\"used\": 16106127360}},"
                " {\"index\": 10, \"kind\": \"cuda\", \"name\": \"A very long device name that goes on\","
                "  \"memory\": {\"total\": 0, \"reserve\": 0, \"weights\": 0, \"workspaces\": 0, \"free\": 0},"
                "  \"running\": 3, \"models\": [\"model-number-one-with-a-long-name\","
                "  \"model-number-two-with-a-long-name\", \"three\", \"bad\\nname\"]}]";

        expect_text(table_to_string(json),
                    "DEV NAME                     VRAM         USED/BUDGET MiB RUN/QUEUED MODELS\n"
                    "0   NVIDIA H200              [##........]    28672/142336 2/1        sd15, sdxl\n"
                    "1   cpu                      [..........]          0/8192 0/0        -\n"
                    "2   old?[2Jgpu               [##########]     15360/15360 -          -\n"
                    "10  A very long device na... [..........]               - 3/-        "
                    "model-number-one-with-a-long-name, +3 more\n");
        expect_text(table_to_string("[]"), "(no devices)\n");
        expect_text(table_to_string("null"), "(no devices)\n");
        expect_text(table_to_string("{\"not\": \"an array\"}"), "(no devices)\n");
}

static void test_top_frame(void **state) {
        json_object *status = json_tokener_parse(
                "{\"version\": \"0.1.0\", \"state\": \"running\", \"uptime_usec\": 3725000000, \"pid\": 42,"
                " \"connections\": 1, \"devices\": [{\"index\": 0, \"kind\": \"cpu\", \"name\": \"cpu\","
                " \"memory\": {\"total\": 67108864, \"reserve\": 0, \"weights\": 33554432, \"workspaces\": 0,"
                " \"free\": 0}, \"running\": 1, \"queued\": 0, \"models\": [\"sum\"]}]}");
        json_object *jobs = json_tokener_parse(
                "{\"jobs\": [{\"job\": \"j-1\", \"pipeline\": \"test-sum\", \"state\": \"running\","
                " \"priority\": \"normal\", \"device\": 0, \"step\": 3, \"steps\": 8,"
                " \"submitted_usec\": 1699999990000000}]}");
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);

        assert_non_null(status);
        assert_non_null(jobs);
        assert_non_null(f);
        ctl_top_frame_print(f, status, jobs, NOW_USEC);
        assert_int_equal(fclose(f), 0);
        expect_text(text, "gpuhostd 0.1.0: running, up 1h02m, pid 42, 1 connection\n"
                          "\n"
                          "DEV NAME VRAM         USED/BUDGET MiB RUN/QUEUED MODELS\n"
                          "0   cpu  [#####.....]           32/64 1/0        sum\n"
                          "\n"
                          "JOB PIPELINE STATE     PRIORITY    DEVICE STEP TAG AGE\n"
                          "j-1 test-sum running   normal      0      3/8  -   10s\n");

        /* Either part alone. */
        text = NULL;
        f = open_memstream(&text, &size);
        ctl_top_frame_print(f, NULL, jobs, NOW_USEC);
        assert_int_equal(fclose(f), 0);
        assert_true(strncmp(text, "JOB ", 4) == 0);
        free(text);
        text = NULL;
        f = open_memstream(&text, &size);
        ctl_top_frame_print(f, status, NULL, NOW_USEC);
        assert_int_equal(fclose(f), 0);
        assert_null(strstr(text, "JOB"));
        assert_non_null(strstr(text, "[#####.....]"));
        free(text);
        json_object_put(status);
        json_object_put(jobs);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vram_bar),
                cmocka_unit_test(test_device_row),
                cmocka_unit_test(test_devices_table),
                cmocka_unit_test(test_top_frame),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
