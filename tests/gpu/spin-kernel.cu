/* test-gpu-slices' kernel: each block spins for |cycles| SM clock cycles,
 * then its first thread writes tag + block index and the SM it ran on, so
 * the run time of a large grid scales with the SMs it gets. Compiled to
 * PTX at build time. */
extern "C" __global__ void gh_spin(unsigned long long cycles, unsigned tag, unsigned *out) {
        long long start = clock64();
        while ((unsigned long long) (clock64() - start) < cycles)
                ;
        __syncthreads();
        if (threadIdx.x == 0) {
                unsigned smid;
                asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
                out[2 * blockIdx.x] = tag + blockIdx.x;
                out[2 * blockIdx.x + 1] = smid;
        }
}
