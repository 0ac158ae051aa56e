/* Tensor lookup by name over a model's table. See tindex.h.
 *
 * The entries are sorted by (name, position) with qsort; a lookup is a
 * lower-bound bisection on the name, so the first of equal names (the one
 * a scan from the start would find) is the answer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tindex.h"

static const char *entry_name(json_object *o, bool rows) {
        json_object *n;

        if (rows)
                n = json_object_is_type(o, json_type_array) && json_object_array_length(o) > 0
                            ? json_object_array_get_idx(o, 0)
                            : NULL;
        else
                n = json_object_is_type(o, json_type_object) ? json_object_object_get(o, "name") : NULL;
        return json_object_is_type(n, json_type_string) ? json_object_get_string(n) : NULL;
}

static int compare(const void *a, const void *b) {
        const gh_tindex_entry *x = a, *y = b;
        int c = strcmp(x->name, y->name);

        return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

int gh_tindex_build(json_object *table, bool rows, gh_tindex *ret) {
        size_t n = json_object_is_type(table, json_type_array) ? json_object_array_length(table) : 0;

        *ret = (gh_tindex){0};
        if (n == 0)
                return 0;
        ret->e = calloc(n, sizeof(*ret->e));
        if (!ret->e)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_array_get_idx(table, i);
                const char *name = entry_name(o, rows);
                if (name)
                        ret->e[ret->n++] = (gh_tindex_entry){.name = name, .pos = i, .obj = o};
        }
        qsort(ret->e, ret->n, sizeof(*ret->e), compare);
        return 0;
}

json_object *gh_tindex_find(const gh_tindex *ix, const char *name) {
        size_t lo = 0, hi = ix->n;

        if (!name)
                return NULL;
        while (lo < hi) { /* the first entry not below |name| */
                size_t mid = lo + (hi - lo) / 2;
                if (strcmp(ix->e[mid].name, name) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo < ix->n && strcmp(ix->e[lo].name, name) == 0 ? ix->e[lo].obj : NULL;
}

void gh_tindex_free(gh_tindex *ix) {
        if (!ix)
                return;
        free(ix->e);
        *ix = (gh_tindex){0};
}
