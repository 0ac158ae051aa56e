# The diffusion runtime's CPU backend against double-precision references.
gh_add_test(test-backend-cpu LIBS gh-dbackend-cpu)
