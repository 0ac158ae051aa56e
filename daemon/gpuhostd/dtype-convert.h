/* Element type conversion while loading weights: between F32, F16 and
 * BF16, rounding to nearest even, NaN kept NaN, overflow to infinity. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "../common/safetensors.h"

/* "fp32", "fp16", "bf16" (as in the config) -> the dtype; F32 otherwise. */
gh_dtype gh_dtype_from_config(const char *s);
/* Whether |src| can be converted to |dst| (both floating, F32/F16/BF16). */
bool gh_dtype_convertible(gh_dtype src, gh_dtype dst);
/* Converts |n| elements; |src| and |dst| must not overlap. */
void gh_dtype_convert(gh_dtype src_type, const void *src, gh_dtype dst_type, void *dst, size_t n);

float gh_f16_to_f32(uint16_t h);
uint16_t gh_f32_to_f16(float f);
float gh_bf16_to_f32(uint16_t h);
uint16_t gh_f32_to_bf16(float f);
