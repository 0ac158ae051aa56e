/* libFuzzer target for the configuration parser (daemon/gpuhostd/config.c):
 * the input is the text of one config file. A text that parses must parse
 * again on top of the result (as a second file setting the same keys would)
 * with the same summary; a text that fails must leave a formatted error
 * naming the file. Group names are not resolved (that reads /etc/group). */
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "common/util.h"
#include "gpuhostd/config.h"


static char *summary_text(const gh_config *c) {
        json_object *o = gh_config_summary(c);
        CHECK(o);
        char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        CHECK(s);
        json_object_put(o);
        return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        gh_config *c = NULL;
        gh_config_error err = {0};
        char msg[1024];

        if (size > 64 * 1024) /* files are read whole; keep inputs small */
                return 0;
        /* The parser takes a length, but callers hand it NUL-terminated
         * text; give it exactly that so ASan sees any read past the end. */
        char *text = malloc(size + 1);
        CHECK(text);
        memcpy(text, data, size);
        text[size] = 0;

        CHECK(gh_config_new(&c) == 0);
        int r = gh_config_parse_string(c, text, size, "fuzz.conf", &err);
        if (r < 0) {
                CHECK(r == -EINVAL || r == -ERANGE || r == -ENOMEM);
                CHECK(strcmp(err.file, "fuzz.conf") == 0);
                CHECK(err.message[0]);
                gh_config_error_format(&err, msg, sizeof(msg));
                CHECK(strncmp(msg, "fuzz.conf", 9) == 0);
                json_object_put(gh_config_error_to_json(&err));
        } else {
                CHECK(r == 0);
                CHECK(c->socket_path && c->socket_path[0] == '/');
                _cleanup_free_ char *s1 = summary_text(c);
                /* Applying the same text again changes nothing. */
                CHECK(gh_config_parse_string(c, text, size, "fuzz.conf", &err) == 0);
                _cleanup_free_ char *s2 = summary_text(c);
                CHECK(strcmp(s1, s2) == 0);
        }
        gh_config_free(c);
        free(text);
        return 0;
}
