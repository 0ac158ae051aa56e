/* Checkpoints from files (see files.h): safetensors headers through the
 * strict reader of the model store, data through read-only mappings. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/safetensors.h"
#include "dfiles.h"

#define MAX_FILES 64
#define AUX_MAX (64u << 20)

typedef struct dfile {
        char *prefix;
        gh_st_file *st;
        void *map;
        size_t size;
        void **copies; /* per tensor: an aligned copy, or NULL */
} dfile;

typedef struct aux {
        char *name;
        void *data;
        size_t size;
} aux;

struct gh_dfiles {
        gh_dsource src;
        dfile files[MAX_FILES];
        size_t n_files;
        aux aux[2];
        size_t n_aux;
};

static gh_dtype_id dtype_id(gh_dtype d) {
        switch (d) {
        case GH_DTYPE_F32: return GH_TENSOR_F32;
        case GH_DTYPE_F16: return GH_TENSOR_F16;
        case GH_DTYPE_BF16: return GH_TENSOR_BF16;
        case GH_DTYPE_I64: return GH_TENSOR_I64;
        case GH_DTYPE_I32: return GH_TENSOR_I32;
        default: return GH_TENSOR_OTHER;
        }
}

static int tensor_of(dfile *f, size_t i, gh_tensor *ret) {
        const gh_st_tensor *t = &f->st->tensors[i];
        size_t es = gh_dtype_size(t->dtype), bytes = (size_t) (t->end - t->begin);
        const char *p = (const char *) f->map + f->st->data_start + t->begin;

        if (es > 1 && ((uintptr_t) p % es)) {
                if (!f->copies[i]) {
                        if (posix_memalign(&f->copies[i], 64, bytes ? bytes : 1))
                                return -ENOMEM;
                        memcpy(f->copies[i], p, bytes);
                }
                p = f->copies[i];
        }
        *ret = (gh_tensor){.data = p, .dtype = dtype_id(t->dtype), .dtype_name = gh_dtype_to_string(t->dtype),
                           .n_dims = t->n_dims, .bytes = bytes};
        memcpy(ret->shape, t->shape, sizeof(ret->shape));
        return 0;
}

static int lookup(void *ctx, const char *name, gh_tensor *ret) {
        gh_dfiles *fs = ctx;

        for (size_t i = 0; i < fs->n_aux; i++)
                if (strcmp(fs->aux[i].name, name) == 0) {
                        *ret = (gh_tensor){.data = fs->aux[i].data, .dtype = GH_TENSOR_OTHER, .dtype_name = "U8",
                                           .n_dims = 1, .shape = {fs->aux[i].size}, .bytes = fs->aux[i].size};
                        return 0;
                }
        for (size_t i = 0; i < fs->n_files; i++) {
                dfile *f = &fs->files[i];
                size_t n = strlen(f->prefix);
                const gh_st_tensor *t;
                if (strncmp(name, f->prefix, n) || !(t = gh_st_find(f->st, name + n)))
                        continue;
                return tensor_of(f, (size_t) (t - f->st->tensors), ret);
        }
        return -ENOENT;
}

static int add_file(gh_dfiles *fs, const char *path, const char *prefix, char *err, size_t err_size) {
        dfile *f;
        int fd = -1, r;
        struct stat st;

        if (fs->n_files == MAX_FILES)
                return snprintf(err, err_size, "%s: more than %d files", path, MAX_FILES), -E2BIG;
        f = &fs->files[fs->n_files];
        *f = (dfile){0};
        if ((r = gh_st_open(AT_FDCWD, path, NULL, &f->st, &fd, err, err_size)) < 0)
                return r;
        if (fstat(fd, &st) < 0 || (f->map = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED) {
                r = -errno;
                close(fd);
                f->map = NULL;
                gh_st_free(f->st);
                return snprintf(err, err_size, "%s: %s", path, strerror(-r)), r;
        }
        close(fd);
        f->size = (size_t) st.st_size;
        f->prefix = strdup(prefix);
        f->copies = calloc(f->st->n_tensors ? f->st->n_tensors : 1, sizeof(void *));
        fs->n_files++;
        return f->prefix && f->copies ? 0 : -ENOMEM;
}

static int add_aux(gh_dfiles *fs, const char *path, const char *name, char *err, size_t err_size) {
        FILE *fp = fopen(path, "rbe");
        aux *a = &fs->aux[fs->n_aux];
        long n;

        if (!fp)
                return -errno;
        if (fseek(fp, 0, SEEK_END) < 0 || (n = ftell(fp)) < 0 || n > (long) AUX_MAX || fseek(fp, 0, SEEK_SET) < 0) {
                fclose(fp);
                return snprintf(err, err_size, "%s: unreadable or larger than %u bytes", path, AUX_MAX), -EFBIG;
        }
        *a = (aux){.name = strdup(name), .data = malloc((size_t) n + 1), .size = (size_t) n};
        if (!a->name || !a->data || fread(a->data, 1, (size_t) n, fp) != (size_t) n) {
                fclose(fp);
                free(a->name);
                free(a->data);
                return -EIO;
        }
        fclose(fp);
        fs->n_aux++;
        return 0;
}

static int add_tokenizer(gh_dfiles *fs, const char *dir, char *err, size_t err_size) {
        static const char *const names[] = {"vocab.json", "merges.txt"};
        char path[4200], name[64];
        int r;

        for (size_t i = 0; i < 2; i++) {
                if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, names[i]) >= sizeof(path))
                        return -ENAMETOOLONG;
                snprintf(name, sizeof(name), "tokenizer/%s", names[i]);
                if ((r = add_aux(fs, path, name, err, err_size)) < 0 && r != -ENOENT)
                        return r;
        }
        return 0;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Every *.safetensors of dir/sub, prefixed "sub/". */
static int add_subdir(gh_dfiles *fs, const char *dir, const char *sub, char *err, size_t err_size) {
        char path[4096], prefix[256];
        char *names[MAX_FILES];
        size_t n = 0;
        struct dirent *de;
        DIR *d;
        int r = 0;

        snprintf(path, sizeof(path), "%s/%s", dir, sub);
        if (!(d = opendir(path)))
                return 0;
        while ((de = readdir(d)) && n < MAX_FILES) {
                size_t l = strlen(de->d_name);
                if (l > 12 && strcmp(de->d_name + l - 12, ".safetensors") == 0)
                        names[n++] = strdup(de->d_name);
        }
        closedir(d);
        qsort(names, n, sizeof(char *), cmp_str);
        snprintf(prefix, sizeof(prefix), "%s/", sub);
        for (size_t i = 0; i < n; i++) {
                snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, names[i] ? names[i] : "");
                if (r >= 0)
                        r = names[i] ? add_file(fs, path, prefix, err, err_size) : -ENOMEM;
                free(names[i]);
        }
        return r;
}

int gh_dfiles_open(const char *path, const char *tokenizer_dir, gh_dfiles **ret, char *err, size_t err_size) {
        static const char *const subs[] = {"unet", "vae", "text_encoder"};
        gh_dfiles *fs = calloc(1, sizeof(*fs));
        char tok[4096];
        struct stat st;
        int r;

        if (!fs)
                return -ENOMEM;
        fs->src = (gh_dsource){lookup, fs};
        if (stat(path, &st) < 0) {
                r = -errno;
                snprintf(err, err_size, "%s: %s", path, strerror(-r));
                goto fail;
        }
        if (S_ISDIR(st.st_mode)) {
                for (size_t i = 0; i < 3; i++)
                        if ((r = add_subdir(fs, path, subs[i], err, err_size)) < 0)
                                goto fail;
                snprintf(tok, sizeof(tok), "%s/tokenizer", path);
                if (!tokenizer_dir)
                        tokenizer_dir = tok;
        } else if ((r = add_file(fs, path, "", err, err_size)) < 0)
                goto fail;
        if (tokenizer_dir && (r = add_tokenizer(fs, tokenizer_dir, err, err_size)) < 0)
                goto fail;
        *ret = fs;
        return 0;
fail:
        gh_dfiles_close(fs);
        return r;
}

gh_dfiles *gh_dfiles_close(gh_dfiles *fs) {
        if (!fs)
                return NULL;
        for (size_t i = 0; i < fs->n_files; i++) {
                dfile *f = &fs->files[i];
                for (size_t k = 0; f->copies && k < f->st->n_tensors; k++)
                        free(f->copies[k]);
                free(f->copies);
                if (f->map)
                        munmap(f->map, f->size);
                gh_st_free(f->st);
                free(f->prefix);
        }
        for (size_t i = 0; i < fs->n_aux; i++) {
                free(fs->aux[i].name);
                free(fs->aux[i].data);
        }
        free(fs);
        return NULL;
}

const gh_dsource *gh_dfiles_source(gh_dfiles *fs) {
        return &fs->src;
}
