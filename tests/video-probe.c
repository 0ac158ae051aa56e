/* video-probe FILE [KEY]: what decoding an MP4 file with FFmpeg's libraries
 * finds (plugins/video/encode.c's probe), as one JSON object: width,
 * height, frames decoded, fps, codec, and the value of metadata KEY
 * ("comment" by default). For the video plugin's end-to-end test. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "encode.h"

#define FILE_MAX (256u << 20)

static unsigned char *read_all(const char *path, size_t *ret) {
        FILE *f = fopen(path, "rbe");
        unsigned char *buf = NULL;
        long n;

        if (!f)
                return NULL;
        if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && (unsigned long) n <= FILE_MAX &&
            fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t) n)) && fread(buf, 1, (size_t) n, f) == (size_t) n)
                *ret = (size_t) n;
        else {
                free(buf);
                buf = NULL;
        }
        fclose(f);
        return buf;
}

int main(int argc, char **argv) {
        gh_video_info info;
        char err[512] = "";
        size_t size = 0;
        unsigned char *data;
        int r;

        if (argc < 2 || argc > 3) {
                fprintf(stderr, "usage: video-probe FILE [KEY]\n");
                return 2;
        }
        if (!(data = read_all(argv[1], &size))) {
                fprintf(stderr, "video-probe: cannot read %s\n", argv[1]);
                return 1;
        }
        r = gh_video_probe(data, size, argc > 2 ? argv[2] : "comment", &info, err, sizeof(err));
        free(data);
        if (r < 0) {
                fprintf(stderr, "video-probe: %s\n", err);
                return 1;
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "width", json_object_new_int64(info.width));
        json_object_object_add(o, "height", json_object_new_int64(info.height));
        json_object_object_add(o, "frames", json_object_new_int64(info.frames));
        json_object_object_add(o, "fps", json_object_new_double(info.fps));
        json_object_object_add(o, "codec", json_object_new_string(info.codec));
        json_object_object_add(o, "meta", json_object_new_string(info.meta_value));
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return 0;
}
