/* Unit tests for gpuhostctl's device table and "top" frame
 * (daemon/gpuhostctl/devtable.c, cmd-top.c): the VRAM bar at its edges,
 * a Device read from a GetStatus reply in the current form ("memory",
 * counts, models) and in the older one (memory_total, pool), the table
 * byte for byte (names with control characters, long names and model
 * lists cut), a whole frame of "top", and the AUTOMATIC1111 "parameters"
 * text of a job's metadata (ctl_a1111_parameters). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

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

/* ---- AUTOMATIC1111's "parameters" ---- */

/* The text for |metadata| (JSON text); |want| NULL: none. */
static void expect_a1111(const char *metadata, const char *want) {
        json_object *m = json_tokener_parse(metadata);
        char *got = (char *) 1;

        assert_non_null(m);
        assert_int_equal(ctl_a1111_parameters(m, &got), 0);
        if (!want) {
                if (got)
                        fail_msg("%s: wanted no text, got '%s'", metadata, got);
        } else if (!got || strcmp(got, want) != 0) {
                print_error("%s:\ngot    '%s'\nwanted '%s'\n", metadata, got ? got : "(none)", want);
                fail();
        }
        free(got);
        json_object_put(m);
}

static void test_a1111_parameters(void **state) {
        /* Everything, as a plugin reports it: strings. */
        expect_a1111("{\"prompt\": \"a cat\", \"negative_prompt\": \"blurry\", \"steps\": \"20\", "
                     "\"sampler\": \"euler_a\", \"cfg_scale\": \"7.5\", \"seed\": \"1234\", \"width\": \"512\", "
                     "\"height\": \"512\", \"model_hash\": \"0123456789abcdef0123456789abcdef\", \"model\": \"sd15\", "
                     "\"clip_skip\": \"2\", \"strength\": \"0.5\"}",
                     "a cat\n"
                     "Negative prompt: blurry\n"
                     "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 512x512, Model hash: 0123456789, "
                     "Model: sd15, Clip skip: 2, Denoising strength: 0.5");
        /* In the web UI's order whatever the metadata's; other keys ignored. */
        expect_a1111("{\"strength\": \"0.75\", \"model\": \"sdxl\", \"seed\": \"42\", \"prompt\": \"p\", "
                     "\"device\": \"cuda\", \"steps\": \"30\"}",
                     "p\nSteps: 30, Seed: 42, Model: sdxl, Denoising strength: 0.75");
        /* JSON numbers as Python prints them. */
        expect_a1111("{\"prompt\": \"p\", \"steps\": 20, \"cfg_scale\": 7.0, \"seed\": 18446744073709551615, "
                     "\"width\": 768, \"height\": 512, \"strength\": 0.1, \"clip_skip\": 2}",
                     "p\nSteps: 20, CFG scale: 7.0, Seed: 18446744073709551615, Size: 768x512, Clip skip: 2, "
                     "Denoising strength: 0.1");
        expect_a1111("{\"prompt\": \"p\", \"cfg_scale\": 7.25, \"strength\": 1e-07}",
                     "p\nCFG scale: 7.25, Denoising strength: 1e-07");
        /* The samplers by name; one we do not know as it is. */
        expect_a1111("{\"prompt\": \"p\", \"sampler\": \"euler\"}", "p\nSampler: Euler");
        expect_a1111("{\"prompt\": \"p\", \"sampler\": \"ddim\"}", "p\nSampler: DDIM");
        expect_a1111("{\"prompt\": \"p\", \"sampler\": \"dpmpp_2m\"}", "p\nSampler: DPM++ 2M");
        expect_a1111("{\"prompt\": \"p\", \"sampler\": \"dpmpp_2m_karras\"}", "p\nSampler: DPM++ 2M Karras");
        expect_a1111("{\"prompt\": \"p\", \"sampler\": \"lms\"}", "p\nSampler: lms");
        /* Only the prompt: one line. An empty negative prompt: no line. */
        expect_a1111("{\"prompt\": \"p\"}", "p");
        expect_a1111("{\"prompt\": \"p\", \"negative_prompt\": \"\", \"steps\": \"4\"}", "p\nSteps: 4");
        expect_a1111("{\"prompt\": \"\", \"negative_prompt\": \"n\"}", "\nNegative prompt: n");
        /* Prompts as they are, on as many lines as they have, UTF-8. */
        expect_a1111("{\"prompt\": \"a, b: c\\nd \\u00e9\", \"negative_prompt\": \"x,\\ny\", \"steps\": \"1\"}",
                     "a, b: c\nd \xc3\xa9\nNegative prompt: x,\ny\nSteps: 1");
        /* Values with ',', ':' or a newline quoted as JSON strings. */
        expect_a1111("{\"prompt\": \"p\", \"sampler\": \"a,b\", \"model\": \"x:y\", \"seed\": \"1\\n2\", "
                     "\"strength\": \"caf\\u00e9 \\\"q\\\", r\"}",
                     "p\nSampler: \"a,b\", Seed: \"1\\n2\", Model: \"x:y\", Denoising strength: \"caf\xc3\xa9 \\\"q\\\", r\"");
        /* Size needs both; clip skip only past 1; model hash: its leading
         * hex digits, at most 10. */
        expect_a1111("{\"prompt\": \"p\", \"width\": \"512\", \"clip_skip\": \"1\"}", "p");
        expect_a1111("{\"prompt\": \"p\", \"height\": 512, \"clip_skip\": 1}", "p");
        expect_a1111("{\"prompt\": \"p\", \"clip_skip\": \"x\", \"model_hash\": \"xyz\"}", "p");
        expect_a1111("{\"prompt\": \"p\", \"clip_skip\": \"12\", \"model_hash\": \"ABCdef\"}",
                     "p\nModel hash: ABCdef, Clip skip: 12");
        expect_a1111("{\"prompt\": \"p\", \"model_hash\": \"0a1b2c3d4e5f6\"}", "p\nModel hash: 0a1b2c3d4e");
        expect_a1111("{\"prompt\": \"p\", \"model_hash\": \"12345678-9abc\"}", "p\nModel hash: 12345678");
        /* Absent or null: left out. */
        expect_a1111("{\"prompt\": \"p\", \"steps\": null, \"sampler\": null, \"seed\": null}", "p");
        /* Other JSON values as JSON text. */
        expect_a1111("{\"prompt\": \"p\", \"seed\": true, \"model\": [1]}", "p\nSeed: true, Model: [1]");
        /* No prompt string: no text. */
        expect_a1111("{\"steps\": \"20\"}", NULL);
        expect_a1111("{\"prompt\": null, \"steps\": \"20\"}", NULL);
        expect_a1111("{\"prompt\": 5, \"steps\": \"20\"}", NULL);
        expect_a1111("[\"prompt\"]", NULL);
        char *got = (char *) 1;
        assert_int_equal(ctl_a1111_parameters(NULL, &got), 0);
        assert_null(got);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vram_bar),
                cmocka_unit_test(test_device_row),
                cmocka_unit_test(test_devices_table),
                cmocka_unit_test(test_top_frame),
                cmocka_unit_test(test_a1111_parameters),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
