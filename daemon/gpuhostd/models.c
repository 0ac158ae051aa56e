/* The model store: catalogue, residency, the loader thread, eviction.
 * See models.h. */
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/dirlist.h"
#include "../common/util.h"
#include "dtype-convert.h"
#include "models.h"

#define TENSOR_ALIGN 256
#define COPY_CHUNK (8u << 20)
#define CATALOG_MAX 4096
#define MODEL_FILES_MAX 256
#define AUX_PREFIX "tokenizer/"
#define AUX_MAX_BYTES (UINT64_C(64) << 20)
#define SHA256_HEX 65

/* The tokenizer's files a model may hold besides its weights. */
static const char *const aux_names[] = {"vocab.json", "merges.txt"};

static void tensors_free(gh_tensor_entry *t, size_t n) {
        for (size_t i = 0; t && i < n; i++)
                free(t[i].name);
        free(t);
}

/* ---- catalogue ---- */

typedef struct catalog_entry {
        char *name, *path, *devices;
        char *tokenizer; /* a single file's tokenizer folder, or NULL */
        json_object *parameters; /* [model] parameters: job parameter defaults, or NULL */
        int convert; /* a gh_dtype, or -1 to keep */
        bool pinned, from_config;
        uint64_t bytes; /* pool bytes once loaded (0: unknown, the files are unreadable) */
        bool planned;   /* the headers were read: */
        gh_tensor_entry *tensors; /* the planned table (offsets from the allocation's start) */
        size_t n_tensors;
        uint64_t fingerprint; /* of the weight files when planned */
} catalog_entry;

struct gh_catalog {
        catalog_entry *entries;
        size_t n;
};

gh_catalog *gh_catalog_free(gh_catalog *cat) {
        if (!cat)
                return NULL;
        for (size_t i = 0; i < cat->n; i++) {
                free(cat->entries[i].name);
                free(cat->entries[i].path);
                free(cat->entries[i].devices);
                free(cat->entries[i].tokenizer);
                json_object_put(cat->entries[i].parameters);
                tensors_free(cat->entries[i].tensors, cat->entries[i].n_tensors);
        }
        free(cat->entries);
        free(cat);
        return NULL;
}

static bool name_valid(const char *s, size_t len) {
        if (len == 0 || len > 64 || s[0] == '.' || s[0] == '-')
                return false;
        for (size_t i = 0; i < len; i++)
                if (!isalnum((unsigned char) s[i]) && !strchr("._-", s[i]))
                        return false;
        return true;
}

static catalog_entry *catalog_find(gh_catalog *cat, const char *name) {
        for (size_t i = 0; i < cat->n; i++)
                if (strcmp(cat->entries[i].name, name) == 0)
                        return &cat->entries[i];
        return NULL;
}

static int catalog_add(gh_catalog *cat, const char *name, size_t name_len, const char *path, const char *tokenizer) {
        if (cat->n >= CATALOG_MAX)
                return -E2BIG;
        catalog_entry *e = realloc(cat->entries, (cat->n + 1) * sizeof(*e));
        if (!e)
                return -ENOMEM;
        cat->entries = e;
        e = &cat->entries[cat->n];
        *e = (catalog_entry) {.name = strndup(name, name_len), .path = strdup(path), .convert = -1,
                              .tokenizer = tokenizer ? strdup(tokenizer) : NULL};
        if (!e->name || !e->path || (tokenizer && !e->tokenizer)) {
                free(e->name);
                free(e->path);
                free(e->tokenizer);
                return -ENOMEM;
        }
        cat->n++;
        return 0;
}

static bool has_suffix(const char *s, const char *suffix) {
        size_t a = strlen(s), b = strlen(suffix);
        return a > b && strcmp(s + a - b, suffix) == 0;
}

/* Models directory: "NAME.safetensors" files and "NAME/" folders, in name
 * order, so that which of two same-named entries wins is stable. Files get
 * the default tokenizer folder. */
static int catalog_scan(gh_catalog *cat, const char *dir, const char *tokenizer) {
        char **paths = NULL;
        size_t n = 0;
        int r = gh_dir_list(dir, NULL, CATALOG_MAX, &paths, &n);

        if (r == -ENOENT)
                return 0;
        for (size_t i = 0; r >= 0 && i < n; i++) {
                const char *base = strrchr(paths[i], '/') + 1;
                size_t len = strlen(base);
                struct stat st;
                if (stat(paths[i], &st) < 0)
                        continue;
                if (S_ISREG(st.st_mode) && has_suffix(base, ".safetensors"))
                        len -= strlen(".safetensors");
                else if (!S_ISDIR(st.st_mode))
                        continue;
                if (!name_valid(base, len))
                        continue;
                char name[65];
                snprintf(name, sizeof(name), "%.*s", (int) len, base);
                if (!catalog_find(cat, name))
                        r = catalog_add(cat, base, len, paths[i], S_ISREG(st.st_mode) ? tokenizer : NULL);
        }
        gh_strv_free(paths, n);
        return r;
}

static void plan_entry(catalog_entry *e);

int gh_catalog_build(const gh_config *c, gh_catalog **ret, char *err, size_t err_size) {
        gh_catalog *cat = calloc(1, sizeof(*cat));
        int r = cat ? 0 : -ENOMEM;

        for (size_t i = 0; r >= 0 && i < c->n_models; i++) {
                const gh_model_config *m = &c->models[i];
                r = catalog_add(cat, m->name, strlen(m->name), m->path, m->tokenizer ?: c->models_tokenizer);
                if (r < 0)
                        break;
                catalog_entry *e = &cat->entries[cat->n - 1];
                e->from_config = true;
                e->pinned = m->pinned;
                e->convert = m->dtype ? (int) gh_dtype_from_config(m->dtype) : -1;
                if (m->devices && !(e->devices = strdup(m->devices)))
                        r = -ENOMEM;
                /* Checked when the configuration was read. */
                if (r >= 0 && m->parameters && !(e->parameters = json_tokener_parse(m->parameters)))
                        r = -ENOMEM;
        }
        if (r >= 0 && c->models_directory) {
                r = catalog_scan(cat, c->models_directory, c->models_tokenizer);
                if (r < 0)
                        snprintf(err, err_size, "%s: %s", c->models_directory, strerror(-r));
        }
        if (r < 0) {
                gh_catalog_free(cat);
                return r;
        }
        /* What each model will take in a pool, from its headers: the
         * scheduler admits jobs by it, and plugins' estimates see its
         * tensors, before anything is loaded. */
        for (size_t i = 0; i < cat->n; i++)
                plan_entry(&cat->entries[i]);
        *ret = cat;
        return 0;
}

/* ---- store state ---- */

typedef struct load_waiter {
        gh_load_done_fn done;
        void *userdata;
        struct load_waiter *next;
} load_waiter;

typedef struct job_tensor {
        gh_tensor_entry e;
        unsigned file;
        gh_dtype src_dtype;
        uint64_t src_offset, src_bytes; /* in the file */
} job_tensor;

typedef enum job_phase { JOB_PLAN, JOB_COPY } job_phase;

/* A load in progress. The loader thread owns it while it is queued or
 * running; the loop owns it otherwise. */
typedef struct load_job {
        gh_resident *res;
        job_phase phase;
        char *path;
        char *tokenizer;        /* a single file's tokenizer folder, or NULL */
        int convert;
        char **files;           /* plan: the model's files, with tensor name prefixes: */
        char **prefixes;
        size_t n_files;
        size_t n_weight_files;  /* the .safetensors ones first, then the auxiliary ones */
        uint64_t fingerprint;   /* plan: of the weight files */
        job_tensor *tensors;    /* plan: sorted by file, then source offset */
        size_t n_tensors;
        uint64_t total;
        gh_store_device dev;    /* copy: where to */
        uint64_t base;          /* copy: the pool offset of the allocation */
        uint64_t copy_start_usec;
        bool want_hash;         /* copy: compute the SHA-256 (else sha256 is the model's) */
        char sha256[SHA256_HEX];
        uint64_t hash_fingerprint; /* of the weight files as hashed */
        _Atomic uint64_t done_bytes;
        int r;
        char reason[512];
        struct load_job *next;
} load_job;

struct gh_resident {
        gh_store *store;
        gh_model *model;
        unsigned device;
        bool ready;
        uint64_t offset, bytes;
        gh_tensor_entry *tensors;
        size_t n_tensors;
        unsigned refs;
        uint64_t last_use;
        char sha256[SHA256_HEX];
        load_job *job;
        load_waiter *waiters;
};

struct gh_model {
        char *name, *path, *devices, *tokenizer;
        json_object *parameters; /* job parameter defaults, or NULL */
        int convert;
        bool pinned, from_config, gone;
        uint64_t loads; /* loads started, on any device */
        uint64_t bytes; /* pool bytes of a resident copy (0: unknown) */
        bool listed;    /* in the catalogue being applied */
        bool planned;   /* the catalogue's plan: */
        gh_tensor_entry *tensors;
        size_t n_tensors;
        uint64_t fingerprint;      /* of the weight files */
        json_object *tensors_json; /* made on first use */
        char sha256[SHA256_HEX];   /* "": not known */
        uint64_t sha_fingerprint;  /* of the files it is the hash of */
        gh_resident *resident[GH_STORE_MAX_DEVICES];
};

struct gh_store {
        sd_event *event;
        gh_store_device devices[GH_STORE_MAX_DEVICES];
        bool have_device[GH_STORE_MAX_DEVICES];
        gh_model **models;
        size_t n_models;
        uint64_t clock; /* LRU ticks */

        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        load_job *queue, *finished; /* under lock */
        bool stop;                  /* under lock */
        int efd;
        sd_event_source *efd_source;
        gh_store_observer_fn observer;
        void *observer_data;
};

static void job_free(load_job *j) {
        if (!j)
                return;
        for (size_t i = 0; i < j->n_files; i++) {
                free(j->files[i]);
                free(j->prefixes[i]);
        }
        free(j->files);
        free(j->prefixes);
        for (size_t i = 0; i < j->n_tensors; i++)
                free(j->tensors[i].e.name);
        free(j->tensors);
        free(j->path);
        free(j->tokenizer);
        free(j);
}

/* ---- loader thread: plan ---- */

static int job_add_file(load_job *j, const char *path, const char *prefix) {
        if (j->n_files >= MODEL_FILES_MAX)
                return -E2BIG;
        char **f = realloc(j->files, (j->n_files + 1) * sizeof(char *));
        if (f)
                j->files = f;
        char **p = realloc(j->prefixes, (j->n_files + 1) * sizeof(char *));
        if (p)
                j->prefixes = p;
        if (!f || !p)
                return -ENOMEM;
        j->files[j->n_files] = strdup(path);
        j->prefixes[j->n_files] = strdup(prefix);
        if (!j->files[j->n_files] || !j->prefixes[j->n_files]) {
                free(j->files[j->n_files]);
                free(j->prefixes[j->n_files]);
                return -ENOMEM;
        }
        j->n_files++;
        return 0;
}

/* The *.safetensors files of |dir| (and, with |recurse|, of its direct
 * subfolders, whose names prefix the tensor names), sorted. */
static int job_add_dir(load_job *j, const char *dir, const char *prefix, bool recurse) {
        char **paths = NULL;
        size_t n = 0;
        int r = gh_dir_list(dir, NULL, MODEL_FILES_MAX, &paths, &n);

        for (size_t i = 0; r >= 0 && i < n; i++) {
                const char *name = strrchr(paths[i], '/') + 1;
                char sub[PATH_MAX];
                struct stat st;
                if (stat(paths[i], &st) < 0)
                        continue;
                if (S_ISREG(st.st_mode) && has_suffix(name, ".safetensors"))
                        r = job_add_file(j, paths[i], prefix);
                else if (S_ISDIR(st.st_mode) && recurse) {
                        snprintf(sub, sizeof(sub), "%s%s/", prefix, name);
                        r = job_add_dir(j, paths[i], sub, false);
                }
        }
        gh_strv_free(paths, n);
        return r;
}

static uint64_t align_up(uint64_t v, uint64_t a) {
        return (v + a - 1) & ~(a - 1);
}

static gh_dtype target_dtype(gh_dtype src, int convert) {
        if (convert < 0 || !gh_dtype_convertible(src, (gh_dtype) convert))
                return src;
        return (gh_dtype) convert;
}

static int plan_file(load_job *j, unsigned fi) {
        _cleanup_st_file_ gh_st_file *f = NULL;
        int r = gh_st_open(AT_FDCWD, j->files[fi], NULL, &f, NULL, j->reason, sizeof(j->reason));

        if (r < 0)
                return r;
        job_tensor *t = realloc(j->tensors, (j->n_tensors + f->n_tensors) * sizeof(*t));
        if (!t)
                return -ENOMEM;
        j->tensors = t;
        /* Laid out in file order, for sequential reads. */
        size_t first = j->n_tensors;
        for (size_t i = 0; i < f->n_tensors; i++) {
                const gh_st_tensor *s = &f->tensors[i];
                job_tensor *jt = &j->tensors[j->n_tensors];
                gh_dtype dt = target_dtype(s->dtype, j->convert);
                *jt = (job_tensor) {
                        .e = {.dtype = dt, .n_dims = s->n_dims, .bytes = s->n_elements * gh_dtype_size(dt)},
                        .file = fi, .src_dtype = s->dtype,
                        .src_offset = f->data_start + s->begin, .src_bytes = s->end - s->begin,
                };
                memcpy(jt->e.shape, s->shape, sizeof(s->shape));
                if (asprintf(&jt->e.name, "%s%s", j->prefixes[fi], s->name) < 0)
                        return -ENOMEM;
                j->n_tensors++;
        }
        for (size_t i = first; i + 1 < j->n_tensors; i++) /* insertion sort by source offset */
                for (size_t k = i + 1; k > first && j->tensors[k].src_offset < j->tensors[k - 1].src_offset; k--) {
                        job_tensor tmp = j->tensors[k];
                        j->tensors[k] = j->tensors[k - 1];
                        j->tensors[k - 1] = tmp;
                }
        return 0;
}

static int cmp_tensor_names(const void *a, const void *b) {
        return strcmp((*(const job_tensor *const *) a)->e.name, (*(const job_tensor *const *) b)->e.name);
}

/* Two files of one model may not define the same tensor name. */
static int check_unique(load_job *j) {
        const job_tensor **v = malloc((j->n_tensors + 1) * sizeof(*v));
        int r = 0;

        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < j->n_tensors; i++)
                v[i] = &j->tensors[i];
        qsort(v, j->n_tensors, sizeof(*v), cmp_tensor_names);
        for (size_t i = 1; i < j->n_tensors && r == 0; i++)
                if (strcmp(v[i]->e.name, v[i - 1]->e.name) == 0) {
                        snprintf(j->reason, sizeof(j->reason), "tensor \"%s\" is defined by both %s and %s",
                                 v[i]->e.name, j->files[v[i - 1]->file], j->files[v[i]->file]);
                        r = -EBADMSG;
                }
        free(v);
        return r;
}

/* An auxiliary file, planned as one 1-D U8 tensor "PREFIX + NAME". */
static int plan_aux(load_job *j, unsigned fi, const char *name, uint64_t size) {
        job_tensor *t = realloc(j->tensors, (j->n_tensors + 1) * sizeof(*t));

        if (!t)
                return -ENOMEM;
        j->tensors = t;
        t = &j->tensors[j->n_tensors];
        *t = (job_tensor) {
                .e = {.dtype = GH_DTYPE_U8, .n_dims = 1, .shape = {size}, .bytes = size},
                .file = fi, .src_dtype = GH_DTYPE_U8, .src_offset = 0, .src_bytes = size,
        };
        if (asprintf(&t->e.name, "%s%s", j->prefixes[fi], name) < 0)
                return -ENOMEM;
        j->n_tensors++;
        return 0;
}

/* One of them, if it is there: -ENOENT if not. */
static int add_aux_file(load_job *j, const char *dir, const char *name) {
        _cleanup_free_ char *path = NULL;
        struct stat st;
        int r;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        if (stat(path, &st) < 0) {
                if (errno == ENOENT || errno == ENOTDIR)
                        return -ENOENT;
                r = gh_negerrno();
                snprintf(j->reason, sizeof(j->reason), "%s: %s", path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode))
                return -ENOENT;
        if ((uint64_t) st.st_size > AUX_MAX_BYTES) {
                snprintf(j->reason, sizeof(j->reason), "%s: larger than %" PRIu64 " MiB", path, AUX_MAX_BYTES >> 20);
                return -EFBIG;
        }
        r = job_add_file(j, path, AUX_PREFIX);
        return r < 0 ? r : plan_aux(j, (unsigned) (j->n_files - 1), name, (uint64_t) st.st_size);
}

/* The tokenizer's files: a folder model's tokenizer/ subfolder, or a
 * single file's tokenizer folder. Missing ones are no error. */
static int job_add_aux(load_job *j, bool folder) {
        _cleanup_free_ char *dir = NULL;

        if (folder ? asprintf(&dir, "%s/tokenizer", j->path) < 0 : j->tokenizer && !(dir = strdup(j->tokenizer)))
                return -ENOMEM;
        for (size_t i = 0; dir && i < ELEMENTSOF(aux_names); i++) {
                int r = add_aux_file(j, dir, aux_names[i]);
                if (r < 0 && r != -ENOENT)
                        return r;
        }
        return 0;
}

/* What says that a file is still the one hashed: FNV-1a over its path,
 * device, inode, size and mtime. */
static uint64_t fingerprint_add(uint64_t h, const char *path, const struct stat *st) {
        const uint64_t v[] = {(uint64_t) st->st_dev, (uint64_t) st->st_ino, (uint64_t) st->st_size,
                              (uint64_t) st->st_mtim.tv_sec, (uint64_t) st->st_mtim.tv_nsec};
        const unsigned char *p = (const unsigned char *) path;

        if (!h)
                h = UINT64_C(0xcbf29ce484222325);
        for (size_t i = 0, n = strlen(path) + 1; i < n; i++)
                h = (h ^ p[i]) * UINT64_C(0x100000001b3);
        p = (const unsigned char *) v;
        for (size_t i = 0; i < sizeof(v); i++)
                h = (h ^ p[i]) * UINT64_C(0x100000001b3);
        return h;
}

static int job_fingerprint(load_job *j) {
        uint64_t h = 0;

        for (size_t i = 0; i < j->n_weight_files; i++) {
                struct stat st;
                if (stat(j->files[i], &st) < 0)
                        return gh_negerrno();
                h = fingerprint_add(h, j->files[i], &st);
        }
        j->fingerprint = h;
        return 0;
}

static int job_plan(load_job *j) {
        struct stat st;
        int r;

        if (stat(j->path, &st) < 0) {
                r = gh_negerrno();
                snprintf(j->reason, sizeof(j->reason), "%s: %s", j->path, strerror(-r));
                return r;
        }
        r = S_ISDIR(st.st_mode) ? job_add_dir(j, j->path, "", true) : job_add_file(j, j->path, "");
        if (r >= 0 && j->n_files == 0) {
                snprintf(j->reason, sizeof(j->reason), "%s: no .safetensors files", j->path);
                return -ENOENT;
        }
        j->n_weight_files = j->n_files;
        for (size_t i = 0; r >= 0 && i < j->n_weight_files; i++)
                r = plan_file(j, (unsigned) i);
        if (r >= 0)
                r = job_add_aux(j, S_ISDIR(st.st_mode));
        if (r >= 0)
                r = check_unique(j);
        if (r >= 0)
                r = job_fingerprint(j);
        if (r < 0)
                return r;
        uint64_t cursor = 0;
        for (size_t i = 0; i < j->n_tensors; i++) {
                j->tensors[i].e.offset = align_up(cursor, TENSOR_ALIGN);
                cursor = j->tensors[i].e.offset + j->tensors[i].e.bytes;
        }
        j->total = cursor > 0 ? cursor : TENSOR_ALIGN;
        return 0;
}

/* The planned tensor table, in pool order (the names are taken from |j|). */
static gh_tensor_entry *job_take_table(load_job *j) {
        gh_tensor_entry *t = calloc(j->n_tensors ? j->n_tensors : 1, sizeof(*t));

        for (size_t i = 0; t && i < j->n_tensors; i++) {
                t[i] = j->tensors[i].e;
                t[i].name = TAKE_PTR(j->tensors[i].e.name);
        }
        return t;
}

/* A catalogue entry's plan: its bytes, tensor table and fingerprint; left
 * unplanned if its files cannot be read. */
static void plan_entry(catalog_entry *e) {
        load_job *j = calloc(1, sizeof(*j));

        if (!j || !(j->path = strdup(e->path)) || (e->tokenizer && !(j->tokenizer = strdup(e->tokenizer)))) {
                job_free(j);
                return;
        }
        j->convert = e->convert;
        if (job_plan(j) >= 0 && (e->tensors = job_take_table(j))) {
                e->bytes = j->total;
                e->n_tensors = j->n_tensors;
                e->fingerprint = j->fingerprint;
                e->planned = true;
        }
        job_free(j);
}

/* ---- loader thread: copy ---- */

static int read_full(int fd, void *buf, size_t n, uint64_t offset) {
        char *p = buf;

        while (n > 0) {
                ssize_t k = pread(fd, p, n, (off_t) offset);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return k < 0 ? gh_negerrno() : -EIO; /* the file shrank */
                p += k;
                n -= (size_t) k;
                offset += (uint64_t) k;
        }
        return 0;
}

/* The SHA-256 of the weight files, fed with the bytes as they are read:
 * the tensors' source bytes as they come, the rest of each file (its
 * header) read for it alone. */
typedef struct hasher {
        EVP_MD_CTX *ctx;
        uint64_t pos;        /* bytes of the current file hashed */
        uint64_t fingerprint; /* of the files hashed */
} hasher;

/* Hashes what of [offset, offset + n) of the current file is past pos; the
 * bytes before |offset| must have been hashed (hash_upto). */
static int hash_bytes(hasher *h, const void *buf, uint64_t offset, size_t n) {
        if (!h || offset + n <= h->pos)
                return 0;
        if (offset > h->pos)
                return -EINVAL;
        size_t skip = (size_t) (h->pos - offset);
        if (EVP_DigestUpdate(h->ctx, (const unsigned char *) buf + skip, n - skip) != 1)
                return -EIO;
        h->pos = offset + n;
        return 0;
}

/* Reads and hashes the current file from pos up to |offset|, through |buf|
 * (COPY_CHUNK bytes). */
static int hash_upto(hasher *h, int fd, uint64_t offset, void *buf) {
        while (h && h->pos < offset) {
                size_t n = offset - h->pos < COPY_CHUNK ? (size_t) (offset - h->pos) : COPY_CHUNK;
                int r = read_full(fd, buf, n, h->pos);
                if (r >= 0)
                        r = hash_bytes(h, buf, h->pos, n);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Host pool: read straight into it, or through the staging buffer when
 * the dtype changes. */
static int copy_tensor_host(load_job *j, int fd, const job_tensor *t, void *stage, hasher *h) {
        size_t src_el = gh_dtype_size(t->src_dtype), dst_el = gh_dtype_size(t->e.dtype);
        uint64_t done = 0, dst = j->base + t->e.offset;
        bool convert = t->src_dtype != t->e.dtype;

        while (done < t->src_bytes) {
                size_t n = t->src_bytes - done < COPY_CHUNK ? (size_t) (t->src_bytes - done) : COPY_CHUNK;
                n -= n % src_el;
                void *out = gh_pool_ptr(j->dev.pool, dst + done / src_el * dst_el);
                int r = hash_upto(h, fd, t->src_offset + done, stage);
                if (r >= 0)
                        r = read_full(fd, convert ? stage : out, n, t->src_offset + done);
                if (r >= 0)
                        r = hash_bytes(h, convert ? stage : out, t->src_offset + done, n);
                if (r < 0)
                        return r;
                if (convert)
                        gh_dtype_convert(t->src_dtype, stage, t->e.dtype, out, n / src_el);
                done += n;
                atomic_fetch_add(&j->done_bytes, n / src_el * dst_el);
        }
        return 0;
}

/* Device pool: fill a staging buffer (read straight into it, or convert
 * into it) and submit it; the uploader overlaps copies with reading. */
static int copy_tensor_upload(load_job *j, int fd, const job_tensor *t, void *stage, hasher *h) {
        const gh_store_uploader *up = j->dev.uploader;
        size_t src_el = gh_dtype_size(t->src_dtype), dst_el = gh_dtype_size(t->e.dtype);
        uint64_t done = 0, dst = j->base + t->e.offset;
        bool convert = t->src_dtype != t->e.dtype;

        while (done < t->src_bytes) {
                void *buf;
                size_t cap;
                int r = up->acquire(up->ctx, &buf, &cap);
                if (r < 0)
                        return r;
                size_t max_src = cap / dst_el * src_el;
                if (convert && max_src > COPY_CHUNK)
                        max_src = COPY_CHUNK;
                size_t n = t->src_bytes - done < max_src ? (size_t) (t->src_bytes - done) : max_src;
                n -= n % src_el;
                r = hash_upto(h, fd, t->src_offset + done, stage);
                if (r >= 0)
                        r = read_full(fd, convert ? stage : buf, n, t->src_offset + done);
                if (r >= 0)
                        r = hash_bytes(h, convert ? stage : buf, t->src_offset + done, n);
                if (r < 0)
                        return r;
                if (convert)
                        gh_dtype_convert(t->src_dtype, stage, t->e.dtype, buf, n / src_el);
                r = up->submit(up->ctx, dst + done / src_el * dst_el, n / src_el * dst_el);
                if (r < 0)
                        return r;
                done += n;
                atomic_fetch_add(&j->done_bytes, n / src_el * dst_el);
        }
        return 0;
}

/* Copies the tensors of file |fi| (those from *cursor on) and, for a
 * weight file while hashing, hashes the whole file. */
static int copy_file(load_job *j, unsigned fi, size_t *cursor, void *stage, hasher *h) {
        hasher *fh = h->ctx && fi < j->n_weight_files ? h : NULL;
        _cleanup_close_ int fd = -1;
        struct stat st;
        int r = 0;

        if (!fh && (*cursor >= j->n_tensors || j->tensors[*cursor].file != fi))
                return 0; /* nothing to read */
        fd = open(j->files[fi], O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0) {
                r = gh_negerrno();
                snprintf(j->reason, sizeof(j->reason), "%s: %s", j->files[fi], strerror(-r));
                return r;
        }
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        if (fh) {
                fh->pos = 0;
                fh->fingerprint = fingerprint_add(fh->fingerprint, j->files[fi], &st);
        }
        for (; *cursor < j->n_tensors && j->tensors[*cursor].file == fi; (*cursor)++) {
                const job_tensor *t = &j->tensors[*cursor];
                r = j->dev.uploader ? copy_tensor_upload(j, fd, t, stage, fh) : copy_tensor_host(j, fd, t, stage, fh);
                if (r < 0) {
                        snprintf(j->reason, sizeof(j->reason), "%s: tensor \"%s\": %s", j->files[fi], t->e.name,
                                 strerror(-r));
                        return r;
                }
        }
        r = hash_upto(fh, fd, (uint64_t) st.st_size, stage); /* the rest of the file */
        if (r < 0)
                snprintf(j->reason, sizeof(j->reason), "%s: %s", j->files[fi], strerror(-r));
        return r;
}

static void hash_hex(hasher *h, char out[SHA256_HEX]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned len = 0;

        out[0] = 0;
        if (EVP_DigestFinal_ex(h->ctx, md, &len) != 1 || len * 2 >= SHA256_HEX)
                return;
        for (unsigned i = 0; i < len; i++)
                snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int job_copy(load_job *j) {
        void *stage = malloc(COPY_CHUNK);
        hasher h = {0};
        size_t cursor = 0;
        int r = stage ? 0 : -ENOMEM;

        /* Without a hash context the load goes on: the hash stays unknown. */
        if (j->want_hash && (h.ctx = EVP_MD_CTX_new()) && EVP_DigestInit_ex(h.ctx, EVP_sha256(), NULL) != 1) {
                EVP_MD_CTX_free(h.ctx);
                h.ctx = NULL;
        }
        for (unsigned fi = 0; r >= 0 && fi < j->n_files; fi++)
                r = copy_file(j, fi, &cursor, stage, &h);
        if (j->dev.uploader) {
                int k = j->dev.uploader->flush(j->dev.uploader->ctx); /* also after a failure */
                r = r < 0 ? r : k;
        }
        if (r < 0 && !j->reason[0])
                snprintf(j->reason, sizeof(j->reason), "%s: %s", j->path, strerror(-r));
        if (r >= 0 && h.ctx) {
                hash_hex(&h, j->sha256);
                j->hash_fingerprint = h.fingerprint;
        }
        EVP_MD_CTX_free(h.ctx);
        free(stage);
        return r;
}

static void *loader_main(void *userdata) {
        gh_store *s = userdata;
        uint64_t one = 1;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                while (!s->queue && !s->stop)
                        pthread_cond_wait(&s->cond, &s->lock);
                if (s->stop)
                        break;
                load_job *j = s->queue;
                s->queue = j->next;
                pthread_mutex_unlock(&s->lock);
                j->reason[0] = 0;
                j->r = j->phase == JOB_PLAN ? job_plan(j) : job_copy(j);
                pthread_mutex_lock(&s->lock);
                j->next = s->finished;
                s->finished = j;
                (void) !write(s->efd, &one, sizeof(one));
        }
        pthread_mutex_unlock(&s->lock);
        return NULL;
}

static void job_submit(gh_store *s, load_job *j) {
        pthread_mutex_lock(&s->lock);
        load_job **tail = &s->queue;
        while (*tail)
                tail = &(*tail)->next;
        j->next = NULL;
        *tail = j;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

/* ---- residency (event-loop thread) ---- */

static void resident_finish(gh_resident *res, int r, const char *reason) {
        load_waiter *w = TAKE_PTR(res->waiters);

        while (w) {
                load_waiter *next = w->next;
                w->done(res, r, reason, w->userdata);
                free(w);
                w = next;
        }
}

static void resident_free(gh_resident *res) {
        for (size_t i = 0; i < res->n_tensors; i++)
                free(res->tensors[i].name);
        free(res->tensors);
        free(res);
}

/* Drops the residency: releases its pool space. */
static void resident_drop(gh_resident *res) {
        gh_store *s = res->store;

        if (res->bytes > 0)
                gh_pool_release(s->devices[res->device].pool, res->offset);
        res->model->resident[res->device] = NULL;
        resident_free(res);
}

static void observe(gh_store *s, gh_store_event ev, const gh_model *m, unsigned device, uint64_t bytes, uint64_t usec) {
        if (s->observer)
                s->observer(ev, m, device, bytes, usec, s->observer_data);
}

/* The least recently used model on |device| that may go. */
static gh_resident *eviction_candidate(gh_store *s, unsigned device, const gh_resident *except) {
        gh_resident *best = NULL;

        for (size_t i = 0; i < s->n_models; i++) {
                gh_resident *r = s->models[i]->resident[device];
                if (!r || r == except || !r->ready || r->refs > 0 || r->model->pinned)
                        continue;
                if (!best || r->last_use < best->last_use)
                        best = r;
        }
        return best;
}

static int allocate(gh_store *s, gh_resident *res, uint64_t bytes, char *reason, size_t reason_size) {
        gh_pool *pool = s->devices[res->device].pool;

        for (;;) {
                int r = gh_pool_alloc(pool, bytes, TENSOR_ALIGN, &res->offset);
                if (r != -ENOSPC)
                        return r;
                gh_resident *victim = eviction_candidate(s, res->device, res);
                if (!victim) {
                        gh_pool_stats st;
                        gh_pool_get_stats(pool, &st);
                        snprintf(reason, reason_size,
                                 "needs %" PRIu64 " MiB on device %u; its pool has %" PRIu64 " MiB free in one piece "
                                 "of %" PRIu64 " MiB, the rest held by models in use or pinned",
                                 (bytes + (1 << 20) - 1) >> 20, res->device, st.largest_free >> 20, st.capacity >> 20);
                        return -ENOSPC;
                }
                observe(s, GH_STORE_EVICTED, victim->model, victim->device, victim->bytes, 0);
                resident_drop(victim);
        }
}

static void fail_load(gh_resident *res, load_job *j, int r) {
        char reason[sizeof(j->reason)];

        snprintf(reason, sizeof(reason), "%s", j->reason[0] ? j->reason : strerror(-r));
        job_free(j);
        res->job = NULL;
        res->model->resident[res->device] = NULL;
        resident_finish(res, r, reason);
        resident_free(res);
}

static void on_planned(gh_store *s, load_job *j) {
        gh_resident *res = j->res;
        int r = j->r;

        if (r >= 0)
                r = allocate(s, res, j->total, j->reason, sizeof(j->reason));
        if (r < 0)
                return fail_load(res, j, r);
        res->bytes = j->total;
        res->model->bytes = j->total;
        /* The files are those last hashed: their hash holds. */
        j->want_hash = !res->model->sha256[0] || res->model->sha_fingerprint != j->fingerprint;
        if (!j->want_hash)
                memcpy(j->sha256, res->model->sha256, sizeof(j->sha256));
        j->copy_start_usec = gh_now_usec(CLOCK_MONOTONIC);
        j->base = res->offset;
        j->dev = s->devices[res->device];
        j->phase = JOB_COPY;
        job_submit(s, j);
}

static void on_copied(gh_store *s, load_job *j) {
        gh_resident *res = j->res;

        if (j->r < 0) {
                gh_pool_release(s->devices[res->device].pool, res->offset);
                res->bytes = 0;
                return fail_load(res, j, j->r);
        }
        res->tensors = calloc(j->n_tensors ? j->n_tensors : 1, sizeof(*res->tensors));
        if (!res->tensors) {
                gh_pool_release(s->devices[res->device].pool, res->offset);
                res->bytes = 0;
                return fail_load(res, j, -ENOMEM);
        }
        for (size_t i = 0; i < j->n_tensors; i++) {
                res->tensors[i] = j->tensors[i].e;
                res->tensors[i].offset += res->offset; /* from the pool's start */
                res->tensors[i].name = TAKE_PTR(j->tensors[i].e.name);
        }
        res->n_tensors = j->n_tensors;
        memcpy(res->sha256, j->sha256, sizeof(res->sha256));
        if (j->want_hash && j->sha256[0]) {
                memcpy(res->model->sha256, j->sha256, sizeof(j->sha256));
                res->model->sha_fingerprint = j->hash_fingerprint;
        }
        res->ready = true;
        observe(s, GH_STORE_LOADED, res->model, res->device, res->bytes, gh_now_usec(CLOCK_MONOTONIC) - j->copy_start_usec);
        res->last_use = ++s->clock;
        res->job = NULL;
        job_free(j);
        resident_finish(res, 0, NULL);
}

static int on_loader_event(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        gh_store *s = userdata;
        uint64_t v;

        (void) !read(s->efd, &v, sizeof(v));
        pthread_mutex_lock(&s->lock);
        load_job *done = TAKE_PTR(s->finished);
        pthread_mutex_unlock(&s->lock);
        while (done) {
                load_job *j = done;
                done = j->next;
                if (j->phase == JOB_PLAN)
                        on_planned(s, j);
                else
                        on_copied(s, j);
        }
        return 0;
}

/* ---- store ---- */

int gh_store_new(sd_event *event, gh_store **ret) {
        gh_store *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        s->event = sd_event_ref(event);
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        int r = s->efd < 0 ? gh_negerrno() : sd_event_add_io(event, &s->efd_source, s->efd, EPOLLIN, on_loader_event, s);
        if (r >= 0) {
                r = -pthread_create(&s->thread, NULL, loader_main, s);
                s->thread_started = r == 0;
        }
        if (r < 0) {
                gh_store_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

static void model_free(gh_model *m) {
        free(m->name);
        free(m->path);
        free(m->devices);
        free(m->tokenizer);
        json_object_put(m->parameters);
        tensors_free(m->tensors, m->n_tensors);
        json_object_put(m->tensors_json);
        free(m);
}

gh_store *gh_store_free(gh_store *s) {
        if (!s)
                return NULL;
        if (s->thread_started) {
                pthread_mutex_lock(&s->lock);
                s->stop = true;
                pthread_cond_signal(&s->cond);
                pthread_mutex_unlock(&s->lock);
                pthread_join(s->thread, NULL);
        }
        /* Jobs the thread never took or handed back: their loads end. */
        load_job *lists[2] = {TAKE_PTR(s->queue), TAKE_PTR(s->finished)};
        for (int l = 0; l < 2; l++)
                while (lists[l]) {
                        load_job *j = lists[l];
                        lists[l] = j->next;
                        if (j->phase == JOB_COPY)
                                gh_pool_release(s->devices[j->res->device].pool, j->res->offset);
                        j->res->bytes = 0;
                        fail_load(j->res, j, -ECANCELED);
                }
        for (size_t i = 0; i < s->n_models; i++) {
                for (unsigned d = 0; d < GH_STORE_MAX_DEVICES; d++)
                        if (s->models[i]->resident[d])
                                resident_drop(s->models[i]->resident[d]);
                model_free(s->models[i]);
        }
        free(s->models);
        sd_event_source_disable_unref(s->efd_source);
        gh_close(s->efd);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

int gh_store_add_device(gh_store *s, const gh_store_device *dev) {
        if (dev->index >= GH_STORE_MAX_DEVICES || s->have_device[dev->index])
                return -EINVAL;
        s->devices[dev->index] = *dev;
        s->have_device[dev->index] = true;
        return 0;
}

gh_pool *gh_store_pool(gh_store *s, unsigned device) {
        return device < GH_STORE_MAX_DEVICES && s->have_device[device] ? s->devices[device].pool : NULL;
}

static bool model_resident_anywhere(const gh_model *m) {
        for (unsigned d = 0; d < GH_STORE_MAX_DEVICES; d++)
                if (m->resident[d])
                        return true;
        return false;
}

static bool tables_equal(const gh_tensor_entry *a, size_t na, const gh_tensor_entry *b, size_t nb) {
        if (na != nb)
                return false;
        for (size_t i = 0; i < na; i++)
                if (strcmp(a[i].name, b[i].name) != 0 || a[i].dtype != b[i].dtype || a[i].n_dims != b[i].n_dims ||
                    memcmp(a[i].shape, b[i].shape, sizeof(a[i].shape)) != 0)
                        return false;
        return true;
}

/* Whether |e| describes other data than |m| holds: other files, other
 * dtypes, another tensor table. */
static bool model_differs(const gh_model *m, const catalog_entry *e) {
        return !gh_streq(m->path, e->path) || m->convert != e->convert ||
               !gh_streq(m->tokenizer ?: "", e->tokenizer ?: "") || m->planned != e->planned ||
               m->fingerprint != e->fingerprint || !tables_equal(m->tensors, m->n_tensors, e->tensors, e->n_tensors);
}

/* Takes |e|'s settings and plan. */
static int model_update(gh_model *m, catalog_entry *e) {
        char *path = strdup(e->path), *devices = e->devices ? strdup(e->devices) : NULL;
        char *tokenizer = e->tokenizer ? strdup(e->tokenizer) : NULL;

        if (!path || (e->devices && !devices) || (e->tokenizer && !tokenizer)) {
                free(path);
                free(devices);
                free(tokenizer);
                return -ENOMEM;
        }
        free(m->path);
        free(m->devices);
        free(m->tokenizer);
        m->path = path;
        m->devices = devices;
        m->tokenizer = tokenizer;
        m->convert = e->convert;
        m->pinned = e->pinned;
        json_object *parameters = json_object_get(e->parameters);
        json_object_put(m->parameters);
        m->parameters = parameters;
        if (e->bytes)
                m->bytes = e->bytes;
        tensors_free(m->tensors, m->n_tensors);
        m->tensors = TAKE_PTR(e->tensors);
        m->n_tensors = e->n_tensors;
        m->planned = e->planned;
        m->fingerprint = e->fingerprint;
        json_object_put(m->tensors_json); /* made again from the new table */
        m->tensors_json = NULL;
        /* Files changed (or unreadable) since they were hashed: unknown. */
        if (!e->planned || e->fingerprint != m->sha_fingerprint)
                m->sha256[0] = 0;
        m->from_config = e->from_config;
        m->gone = false;
        return 0;
}

static gh_model *model_new(gh_store *s, const char *name) {
        gh_model **v = realloc(s->models, (s->n_models + 1) * sizeof(*v));
        gh_model *m = calloc(1, sizeof(*m));

        if (v)
                s->models = v;
        if (!v || !m || !(m->name = strdup(name))) {
                free(m);
                return NULL;
        }
        m->convert = -1;
        s->models[s->n_models++] = m;
        return m;
}

/* One entry: updates its model, or when the entry describes other data
 * than a resident model holds, retires that one (it stays, undeclared,
 * while resident) for a new one. Returns true if estimates may differ. */
static bool apply_entry(gh_store *s, catalog_entry *e) {
        gh_model *m = gh_store_find(s, e->name), *fresh = NULL;
        bool changed = !m || model_differs(m, e);

        if (changed && (!m || model_resident_anywhere(m)))
                fresh = model_new(s, e->name);
        if (fresh && model_update(fresh, e) >= 0) {
                if (m)
                        m->gone = true; /* retired */
                fresh->listed = true;
                return changed;
        }
        if (fresh)
                fresh->gone = true; /* out of memory: dropped below */
        if (m) {
                (void) model_update(m, e); /* on failure, keeps the old settings */
                m->listed = true;
        }
        return changed;
}

bool gh_store_apply_catalog(gh_store *s, gh_catalog *cat) {
        bool changed = false;

        for (size_t i = 0; i < s->n_models; i++)
                s->models[i]->listed = false;
        for (size_t i = 0; i < cat->n; i++)
                changed |= apply_entry(s, &cat->entries[i]);
        /* Models no longer declared go once nothing of them is resident. */
        size_t k = 0;
        for (size_t i = 0; i < s->n_models; i++) {
                gh_model *m = s->models[i];
                if (!m->listed && !m->gone) {
                        m->gone = true;
                        changed = true;
                }
                if (m->gone && !model_resident_anywhere(m))
                        model_free(m);
                else
                        s->models[k++] = m;
        }
        s->n_models = k;
        gh_catalog_free(cat);
        return changed;
}

gh_model *gh_store_find(gh_store *s, const char *name) {
        for (size_t i = 0; i < s->n_models; i++)
                if (!s->models[i]->gone && strcmp(s->models[i]->name, name) == 0)
                        return s->models[i];
        return NULL;
}

const char *gh_model_name(const gh_model *m) {
        return m->name;
}

json_object *gh_model_parameters(const gh_model *m) {
        return m->parameters;
}

uint64_t gh_model_bytes(const gh_model *m) {
        return m->bytes;
}

const gh_tensor_entry *gh_model_tensors(const gh_model *m, size_t *ret_n) {
        *ret_n = m->planned ? m->n_tensors : 0;
        return m->planned ? m->tensors : NULL;
}

json_object *gh_model_tensors_json(gh_model *m) {
        if (!m->planned || m->tensors_json)
                return m->tensors_json;
        json_object *a = json_object_new_array_ext((int) m->n_tensors);
        for (size_t i = 0; a && i < m->n_tensors; i++) {
                const gh_tensor_entry *t = &m->tensors[i];
                json_object *row = json_object_new_array_ext((int) t->n_dims + 2);
                json_object_array_add(row, json_object_new_string(t->name));
                json_object_array_add(row, json_object_new_string(gh_dtype_to_string(t->dtype)));
                for (unsigned k = 0; k < t->n_dims; k++)
                        json_object_array_add(row, json_object_new_int64((int64_t) t->shape[k]));
                json_object_array_add(a, row);
        }
        m->tensors_json = a;
        return a;
}

const char *gh_model_sha256(const gh_model *m) {
        return m->sha256[0] ? m->sha256 : NULL;
}

uint64_t gh_store_evictable(gh_store *s, unsigned device, const gh_model *const *keep, size_t n_keep) {
        uint64_t n = 0;

        for (size_t i = 0; device < GH_STORE_MAX_DEVICES && i < s->n_models; i++) {
                gh_resident *r = s->models[i]->resident[device];
                bool kept = false;
                for (size_t k = 0; k < n_keep; k++)
                        kept |= keep[k] == s->models[i];
                if (r && r->ready && r->refs == 0 && !r->model->pinned && !kept)
                        n += r->bytes;
        }
        return n;
}

void gh_store_set_observer(gh_store *s, gh_store_observer_fn fn, void *userdata) {
        s->observer = fn;
        s->observer_data = userdata;
}

const char *gh_model_devices(const gh_model *m) {
        return m->devices;
}

gh_resident *gh_model_resident(const gh_model *m, unsigned device) {
        return device < GH_STORE_MAX_DEVICES ? m->resident[device] : NULL;
}

static int add_waiter(gh_resident *res, gh_load_done_fn done, void *userdata) {
        load_waiter *w = calloc(1, sizeof(*w));

        if (!w)
                return -ENOMEM;
        *w = (load_waiter) {.done = done, .userdata = userdata, .next = res->waiters};
        res->waiters = w;
        return 0;
}

int gh_store_load(gh_store *s, gh_model *m, unsigned device, gh_load_done_fn done, void *userdata) {
        if (!gh_store_pool(s, device))
                return -ENODEV;
        gh_resident *res = m->resident[device];
        if (res && res->ready) {
                res->last_use = ++s->clock;
                if (done)
                        done(res, 0, NULL, userdata);
                return 0;
        }
        if (res)
                return done ? add_waiter(res, done, userdata) : 0;
        res = calloc(1, sizeof(*res));
        load_job *j = calloc(1, sizeof(*j));
        if (!res || !j || !(j->path = strdup(m->path)) || (m->tokenizer && !(j->tokenizer = strdup(m->tokenizer))) ||
            (done && add_waiter(res, done, userdata) < 0)) {
                free(res);
                job_free(j);
                return -ENOMEM;
        }
        *res = (gh_resident) {.store = s, .model = m, .device = device, .job = j, .waiters = res->waiters};
        j->res = res;
        j->phase = JOB_PLAN;
        j->convert = m->convert;
        m->resident[device] = res;
        m->loads++;
        job_submit(s, j);
        return 0;
}

int gh_store_unload(gh_store *s, gh_model *m, unsigned device) {
        gh_resident *res = gh_model_resident(m, device);

        if (!res)
                return -ENOENT;
        if (!res->ready || res->refs > 0)
                return -EBUSY;
        resident_drop(res);
        return 0;
}

int gh_store_set_pinned(gh_store *s, gh_model *m, bool pinned) {
        m->pinned = pinned;
        return 0;
}

bool gh_resident_ready(const gh_resident *r) {
        return r->ready;
}

void gh_resident_ref(gh_resident *r) {
        r->refs++;
        r->last_use = ++r->store->clock;
}

void gh_resident_unref(gh_resident *r) {
        if (r->refs > 0)
                r->refs--;
        r->last_use = ++r->store->clock;
}

unsigned gh_resident_refs(const gh_resident *r) {
        return r->refs;
}

uint64_t gh_resident_offset(const gh_resident *r) {
        return r->offset;
}

uint64_t gh_resident_bytes(const gh_resident *r) {
        return r->bytes;
}

const gh_tensor_entry *gh_resident_tensors(const gh_resident *r, size_t *ret_n) {
        *ret_n = r->n_tensors;
        return r->tensors;
}

const char *gh_resident_sha256(const gh_resident *r) {
        return r->sha256;
}

void gh_resident_progress(const gh_resident *r, uint64_t *ret_done, uint64_t *ret_total) {
        if (r->ready) {
                *ret_done = *ret_total = r->bytes;
        } else if (r->job && r->job->phase == JOB_COPY) {
                *ret_done = atomic_load(&r->job->done_bytes);
                *ret_total = r->job->total;
        } else
                *ret_done = *ret_total = 0;
}

static json_object *resident_json(const gh_resident *r) {
        json_object *o = json_object_new_object();
        uint64_t done, total;

        gh_resident_progress(r, &done, &total);
        json_object_object_add(o, "device", json_object_new_int((int) r->device));
        json_object_object_add(o, "state", json_object_new_string(r->ready ? "ready" : "loading"));
        json_object_object_add(o, "bytes", json_object_new_int64((int64_t) total));
        json_object_object_add(o, "loaded_bytes", json_object_new_int64((int64_t) done));
        json_object_object_add(o, "tensors", json_object_new_int64((int64_t) r->n_tensors));
        json_object_object_add(o, "refcount", json_object_new_int((int) r->refs));
        json_object_object_add(o, "last_use", json_object_new_int64((int64_t) r->last_use));
        return o;
}

json_object *gh_store_models_json(gh_store *s) {
        json_object *a = json_object_new_array();

        for (size_t i = 0; i < s->n_models; i++) {
                const gh_model *m = s->models[i];
                json_object *o = json_object_new_object(), *res = json_object_new_array();
                json_object_object_add(o, "name", json_object_new_string(m->name));
                json_object_object_add(o, "path", json_object_new_string(m->path));
                json_object_object_add(o, "source", json_object_new_string(m->from_config ? "config" : "directory"));
                json_object_object_add(o, "dtype", json_object_new_string(m->convert < 0 ? "keep" : gh_dtype_to_string((gh_dtype) m->convert)));
                json_object_object_add(o, "pinned", json_object_new_boolean(m->pinned));
                json_object_object_add(o, "declared", json_object_new_boolean(!m->gone));
                json_object_object_add(o, "loads", json_object_new_int64((int64_t) m->loads));
                if (m->parameters)
                        json_object_object_add(o, "parameters", json_object_get(m->parameters));
                if (m->sha256[0])
                        json_object_object_add(o, "sha256", json_object_new_string(m->sha256));
                for (unsigned d = 0; d < GH_STORE_MAX_DEVICES; d++)
                        if (m->resident[d])
                                json_object_array_add(res, resident_json(m->resident[d]));
                json_object_object_add(o, "resident", res);
                json_object_array_add(a, o);
        }
        return a;
}
