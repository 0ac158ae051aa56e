/* A1111 prompts: attention syntax, BREAK and 75-token chunks, as
 * stable-diffusion-webui's parse_prompt_attention() and
 * FrozenCLIPEmbedderWithCustomWords.tokenize_line() do them, on top of the
 * CLIP tokenizer (tokenizer.h).
 *
 * Syntax: "(text)" multiplies the weight of text by 1.1, "[text]" by 1/1.1,
 * "(text:1.3)" by 1.3; nesting multiplies; "\(", "\)", "\[", "\]" and "\\"
 * are the characters themselves (a lone "\" is dropped); a ")" or "]"
 * without an open bracket is text, and brackets left open apply to the
 * rest of the prompt. Neighbouring text of equal weight is joined before it
 * is tokenized. "BREAK" (a word of its own, in capitals, outside brackets)
 * ends the chunk. Not supported: prompt editing ("[a:b:0.5]"), alternation
 * ("[a|b]") and textual-inversion embeddings, which A1111 handles before or
 * beside this; their brackets are read as attention syntax.
 *
 * Chunks: 75 tokens each; when one is full and the last comma is at most 20
 * tokens back, the tokens after the comma move on to the next chunk. Each
 * chunk is BOS, its tokens, EOS padding to 75 tokens, EOS: 77 ids; BOS, EOS
 * and padding weigh 1.0. An empty prompt is one chunk. */
#pragma once

#include <stddef.h>

#include "tokenizer.h" /* gh_prompt_tokens */

#define GH_PROMPT_MAX 65536           /* bytes of a prompt */
#define GH_PROMPT_DEPTH_MAX 256       /* brackets open at once */

/* Tokenizes |prompt| (NUL-terminated UTF-8) into |*ret|. Returns 0;
 * -EINVAL for invalid UTF-8 or a weight that is no number ("(a:1.2.3)",
 * which A1111 fails on too) or not finite as a float; -E2BIG for more than
 * GH_TOK_MAX_CHUNKS chunks, a prompt longer than GH_PROMPT_MAX bytes or
 * brackets nested deeper than GH_PROMPT_DEPTH_MAX; -ENOMEM. Failures come
 * with a one-line reason in |err|. */
int gh_prompt_tokenize(const gh_tokenizer *t, const char *prompt, gh_prompt_tokens *ret, char *err,
                       size_t err_size);
