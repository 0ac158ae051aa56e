/* A checkpoint read straight from files, for gpuhost-sd and the tests: a
 * single .safetensors file, or a diffusers-style folder whose subfolders
 * prefix the tensor names ("unet/conv_in.weight"), as the model store
 * lays models out. Files are mapped read-only; a tensor that is not
 * aligned to its element size is copied once. tokenizer/vocab.json and
 * tokenizer/merges.txt of a folder (or of |tokenizer_dir|) are read as
 * U8 tensors of those names, as the store provides them. */
#pragma once

#include "runtime.h"

typedef struct gh_dfiles gh_dfiles;

int gh_dfiles_open(const char *path, const char *tokenizer_dir, gh_dfiles **ret, char *err, size_t err_size);
gh_dfiles *gh_dfiles_close(gh_dfiles *f);
const gh_dsource *gh_dfiles_source(gh_dfiles *f);
