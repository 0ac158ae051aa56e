# The diffusion runtime's CPU backend (backend-cpu*.c): a static library the
# diffusion plugin and the tests link (hidden symbols, like gh-diffusion, so
# that a plugin exports only its entry point). Paths are relative to this
# file, so that it may be included from any directory.
add_library(gh-dbackend-cpu STATIC
  ${CMAKE_CURRENT_LIST_DIR}/backend-cpu.c
  ${CMAKE_CURRENT_LIST_DIR}/backend-cpu-kern.c)
set_target_properties(gh-dbackend-cpu PROPERTIES POSITION_INDEPENDENT_CODE ON C_VISIBILITY_PRESET hidden)
target_include_directories(gh-dbackend-cpu PUBLIC ${PROJECT_SOURCE_DIR}/include ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(gh-dbackend-cpu PUBLIC m Threads::Threads)
# The kernels are always optimised, also in Debug and sanitizer builds (which
# still instrument them): at -O0 a 64x64 picture takes seconds, not a
# fraction of one, and the end-to-end tests would crawl.
target_compile_options(gh-dbackend-cpu PRIVATE -O2)
