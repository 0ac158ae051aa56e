# bench-backend-cpu: GFLOP/s of the diffusion runtime's CPU backend (see the
# program's comment). Needs gh-dbackend-cpu (plugins/diffusion).
add_executable(bench-backend-cpu ${CMAKE_CURRENT_LIST_DIR}/bench-backend-cpu.c)
target_link_libraries(bench-backend-cpu PRIVATE gh-dbackend-cpu)
