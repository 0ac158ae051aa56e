/* The test plugin "test-sum"'s kernel: adds x[begin, end) into *out (fp64),
 * one partial sum per block. Compiled to PTX at build time. */
extern "C" __global__ void gh_block_sum(const float *x, unsigned long long begin, unsigned long long end, double *out) {
        __shared__ double part[256];
        double acc = 0;
        for (unsigned long long i = begin + blockIdx.x * (unsigned long long) blockDim.x + threadIdx.x; i < end;
             i += (unsigned long long) gridDim.x * blockDim.x)
                acc += x[i];
        part[threadIdx.x] = acc;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
                if (threadIdx.x < s)
                        part[threadIdx.x] += part[threadIdx.x + s];
                __syncthreads();
        }
        if (threadIdx.x == 0)
                atomicAdd(out, part[0]);
}
