/* Unit tests for the worker's tensor index (daemon/worker/tindex.c): both
 * table forms (the run message's objects, an estimate's rows), the first of
 * equal names winning, entries without a string name left out, tables that
 * are not arrays, and a table of SD 1.5's size against a plain scan. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "worker/tindex.h"

static json_object *parse(const char *text) {
        json_object *o = json_tokener_parse(text);

        assert_non_null(o);
        return o;
}

static const char *offset_of(json_object *o) {
        return json_object_get_string(json_object_object_get(o, "offset"));
}

static void test_objects(void **state) {
        json_object *t = parse("[{\"name\": \"b\", \"offset\": \"1\"}, {\"name\": \"a\", \"offset\": \"2\"},"
                               " {\"name\": \"b\", \"offset\": \"3\"}, {\"offset\": \"4\"}, {\"name\": 5},"
                               " [\"c\"], \"d\", {\"name\": \"\", \"offset\": \"6\"}]");
        gh_tindex ix;

        assert_int_equal(gh_tindex_build(t, false, &ix), 0);
        assert_int_equal(ix.n, 4); /* b, a, b and "" */
        assert_string_equal(offset_of(gh_tindex_find(&ix, "a")), "2");
        assert_string_equal(offset_of(gh_tindex_find(&ix, "b")), "1"); /* the first of the two */
        assert_string_equal(offset_of(gh_tindex_find(&ix, "")), "6");
        assert_null(gh_tindex_find(&ix, "c")); /* a row in an object table */
        assert_null(gh_tindex_find(&ix, "d"));
        assert_null(gh_tindex_find(&ix, "bb"));
        assert_null(gh_tindex_find(&ix, "5"));
        assert_null(gh_tindex_find(&ix, NULL));
        gh_tindex_free(&ix);
        assert_null(ix.e);
        gh_tindex_free(&ix); /* twice is fine */
        json_object_put(t);
}

static void test_rows(void **state) {
        json_object *t = parse("[[\"x\", \"F32\", 2], [\"y\", \"F16\"], [], [7, \"F32\"], [\"x\", \"BF16\"]]");
        gh_tindex ix;

        assert_int_equal(gh_tindex_build(t, true, &ix), 0);
        assert_int_equal(ix.n, 3);
        json_object *x = gh_tindex_find(&ix, "x");
        assert_string_equal(json_object_get_string(json_object_array_get_idx(x, 1)), "F32");
        assert_non_null(gh_tindex_find(&ix, "y"));
        assert_null(gh_tindex_find(&ix, "7"));
        gh_tindex_free(&ix);
        json_object_put(t);
}

static void test_not_tables(void **state) {
        const char *texts[] = {"{}", "\"x\"", "3", "[]", "null"};
        gh_tindex ix;

        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
                json_object *t = json_tokener_parse(texts[i]); /* NULL for "null" */
                assert_int_equal(gh_tindex_build(t, i % 2, &ix), 0);
                assert_int_equal(ix.n, 0);
                assert_null(gh_tindex_find(&ix, "x"));
                gh_tindex_free(&ix);
                json_object_put(t);
        }
        assert_int_equal(gh_tindex_build(NULL, false, &ix), 0);
        assert_int_equal(ix.n, 0);
}

/* 1200 names in a shuffled order, every one found at its own entry, and
 * names next to them (prefixes, one character more) not found. */
static void test_large(void **state) {
        enum { N = 1200 };
        json_object *t = json_object_new_array();
        char name[64];
        gh_tindex ix;

        for (int i = 0; i < N; i++) {
                int k = (i * 7919) % N; /* 7919 is prime, so a permutation */
                json_object *o = json_object_new_object();
                snprintf(name, sizeof(name), "model.diffusion_model.block.%d.weight", k);
                json_object_object_add(o, "name", json_object_new_string(name));
                json_object_object_add(o, "offset", json_object_new_int(k));
                json_object_array_add(t, o);
        }
        assert_int_equal(gh_tindex_build(t, false, &ix), 0);
        assert_int_equal(ix.n, N);
        for (int k = 0; k < N; k++) {
                snprintf(name, sizeof(name), "model.diffusion_model.block.%d.weight", k);
                json_object *o = gh_tindex_find(&ix, name);
                assert_non_null(o);
                assert_int_equal(json_object_get_int(json_object_object_get(o, "offset")), k);
                snprintf(name, sizeof(name), "model.diffusion_model.block.%d.weigh", k);
                assert_null(gh_tindex_find(&ix, name));
                snprintf(name, sizeof(name), "model.diffusion_model.block.%d.weightx", k);
                assert_null(gh_tindex_find(&ix, name));
        }
        gh_tindex_free(&ix);
        json_object_put(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_objects),
                cmocka_unit_test(test_rows),
                cmocka_unit_test(test_not_tables),
                cmocka_unit_test(test_large),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
