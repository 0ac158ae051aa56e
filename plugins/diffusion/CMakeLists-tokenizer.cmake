# The CLIP tokenizer, A1111 prompt weighting and the process's shared
# tokenizers (tokenizer.c, prompt.c, tokcache.c): a
# static library for the diffusion plugin, its unit test and fuzz target.
# Included from plugins/diffusion/CMakeLists.txt.
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)

add_library(gh-tokenizer STATIC ${CMAKE_CURRENT_LIST_DIR}/tokenizer.c ${CMAKE_CURRENT_LIST_DIR}/prompt.c
            ${CMAKE_CURRENT_LIST_DIR}/tokcache.c)
set_target_properties(gh-tokenizer PROPERTIES POSITION_INDEPENDENT_CODE ON C_VISIBILITY_PRESET hidden)
target_include_directories(gh-tokenizer PUBLIC ${CMAKE_CURRENT_LIST_DIR} PRIVATE ${PROJECT_SOURCE_DIR}/daemon)
target_link_libraries(gh-tokenizer PRIVATE PkgConfig::JSONC PkgConfig::PCRE2)
