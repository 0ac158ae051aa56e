/* F32/F16/BF16 conversion. See dtype-convert.h. */
#include <string.h>

#include "dtype-convert.h"

gh_dtype gh_dtype_from_config(const char *s) {
        if (s && strcmp(s, "fp16") == 0)
                return GH_DTYPE_F16;
        if (s && strcmp(s, "bf16") == 0)
                return GH_DTYPE_BF16;
        return GH_DTYPE_F32;
}

static bool is_float(gh_dtype t) {
        return t == GH_DTYPE_F32 || t == GH_DTYPE_F16 || t == GH_DTYPE_BF16;
}

bool gh_dtype_convertible(gh_dtype src, gh_dtype dst) {
        return is_float(src) && is_float(dst);
}

static uint32_t f32_bits(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
}

static float bits_f32(uint32_t u) {
        float f;
        memcpy(&f, &u, 4);
        return f;
}

float gh_f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t) (h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;

        if (exp == 0x1f)
                return bits_f32(sign | 0x7f800000 | (man << 13)); /* inf, NaN */
        if (exp == 0) {
                if (man == 0)
                        return bits_f32(sign);
                /* Subnormal: value = man * 2^-24. */
                float v = (float) man * (1.0f / 16777216.0f);
                return sign ? -v : v;
        }
        return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t gh_f32_to_f16(float f) {
        uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000, abs = u & 0x7fffffff;

        if (abs > 0x7f800000) /* NaN: keep it quiet and non-zero */
                return (uint16_t) (sign | 0x7e00 | ((abs >> 13) & 0x3ff));
        if (abs >= 0x477ff000) /* rounds to >= 65520: infinity */
                return (uint16_t) (sign | 0x7c00);
        if (abs < 0x38800000) { /* below the smallest normal: subnormal or zero */
                if (abs < 0x33000000) /* < 2^-25: rounds to zero */
                        return (uint16_t) sign;
                uint32_t man = (abs & 0x7fffff) | 0x800000, shift = 126 - (abs >> 23);
                uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1);
                uint32_t v = man >> shift;
                if (rest > half || (rest == half && (v & 1)))
                        v++;
                return (uint16_t) (sign | v);
        }
        uint32_t v = ((abs >> 13) - (112u << 10)), rest = abs & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (v & 1)))
                v++; /* may carry into the exponent: still right */
        return (uint16_t) (sign | v);
}

float gh_bf16_to_f32(uint16_t h) {
        return bits_f32((uint32_t) h << 16);
}

uint16_t gh_f32_to_bf16(float f) {
        uint32_t u = f32_bits(f);

        if ((u & 0x7fffffff) > 0x7f800000)
                return (uint16_t) ((u >> 16) | 0x40); /* quiet NaN */
        u += 0x7fff + ((u >> 16) & 1);
        return (uint16_t) (u >> 16);
}

static float load(gh_dtype t, const void *p, size_t i) {
        uint16_t h;

        if (t == GH_DTYPE_F32) {
                float f;
                memcpy(&f, (const char *) p + 4 * i, 4);
                return f;
        }
        memcpy(&h, (const char *) p + 2 * i, 2);
        return t == GH_DTYPE_F16 ? gh_f16_to_f32(h) : gh_bf16_to_f32(h);
}

static void store(gh_dtype t, void *p, size_t i, float f) {
        uint16_t h;

        if (t == GH_DTYPE_F32) {
                memcpy((char *) p + 4 * i, &f, 4);
                return;
        }
        h = t == GH_DTYPE_F16 ? gh_f32_to_f16(f) : gh_f32_to_bf16(f);
        memcpy((char *) p + 2 * i, &h, 2);
}

void gh_dtype_convert(gh_dtype src_type, const void *src, gh_dtype dst_type, void *dst, size_t n) {
        for (size_t i = 0; i < n; i++)
                store(dst_type, dst, i, load(src_type, src, i));
}
