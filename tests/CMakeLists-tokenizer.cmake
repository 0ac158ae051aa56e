# The CLIP tokenizer's unit test (plugins/diffusion/tokenizer.c, prompt.c),
# also under valgrind in builds without sanitizers. Included from
# tests/CMakeLists.txt. The tests that need CLIP's real vocabulary skip when
# GH_CLIP_VOCAB_DIR is empty or lacks vocab.json and merges.txt.
set(_gh_clip_dir "${PROJECT_SOURCE_DIR}/../shared/data/clip-vit-large-patch14")
if(NOT EXISTS "${_gh_clip_dir}/vocab.json")
  set(_gh_clip_dir "")
endif()
set(GH_CLIP_VOCAB_DIR "${_gh_clip_dir}" CACHE PATH
    "Directory with CLIP's vocab.json and merges.txt for test-tokenizer (empty: those tests skip)")

if(BUILD_TESTING)
  gh_add_test(test-tokenizer LIBS gh-tokenizer PkgConfig::JSONC ENV "GH_CLIP_VOCAB_DIR=${GH_CLIP_VOCAB_DIR}")
  find_program(VALGRIND valgrind)
  if(VALGRIND AND NOT GH_SANITIZE)
    add_test(NAME valgrind-test-tokenizer
             COMMAND ${VALGRIND} --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
                     --track-fds=yes $<TARGET_FILE:test-tokenizer>)
    set_tests_properties(valgrind-test-tokenizer PROPERTIES TIMEOUT 600 LABELS valgrind
                         ENVIRONMENT "GH_CLIP_VOCAB_DIR=${GH_CLIP_VOCAB_DIR}")
  endif()
endif()
