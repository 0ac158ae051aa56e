/* Tensor lookup by name over a model's table as the daemon sends it: the
 * "run" message's [{name, dtype, shape, offset, bytes}] or an estimate's
 * rows [name, dtype, dim...]. A checkpoint has about a thousand tensors
 * and a plugin looks each of them up: a scan per lookup made loading SD
 * 1.5's views take 17 ms; the index makes it bisection over the names,
 * sorted once (the first of equal names wins, as a scan would find).
 *
 * The index points into |table|, which must outlive it. Not thread-safe:
 * build it and use it on one thread (or build it before others read). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

typedef struct gh_tindex_entry {
        const char *name;
        size_t pos; /* in the table: equal names in table order */
        json_object *obj;
} gh_tindex_entry;

typedef struct gh_tindex {
        gh_tindex_entry *e;
        size_t n;
} gh_tindex;

/* Indexes |table| (a JSON array; anything else gives an empty index):
 * objects by their "name" member, or with |rows| arrays by their first
 * element. Entries without a string name are left out. 0, or -ENOMEM. */
int gh_tindex_build(json_object *table, bool rows, gh_tindex *ret);
/* The table's entry named |name|, NULL if none. */
json_object *gh_tindex_find(const gh_tindex *ix, const char *name);
void gh_tindex_free(gh_tindex *ix);
