// Copies up to four device ranges in one launch: the inputs of a graph replay into their static
// buffers. blockIdx.y picks the range; 16-byte words when every address and size allows,
// bytes otherwise. No header is included (NVRTC runs without an include path).
extern "C" __global__ void pad_copy(
    unsigned long long dst0, unsigned long long src0, unsigned long long bytes0,
    unsigned long long dst1, unsigned long long src1, unsigned long long bytes1,
    unsigned long long dst2, unsigned long long src2, unsigned long long bytes2,
    unsigned long long dst3, unsigned long long src3, unsigned long long bytes3)
{
    unsigned long long dst, src, bytes;
    switch (blockIdx.y) {
        case 0: dst = dst0; src = src0; bytes = bytes0; break;
        case 1: dst = dst1; src = src1; bytes = bytes1; break;
        case 2: dst = dst2; src = src2; bytes = bytes2; break;
        default: dst = dst3; src = src3; bytes = bytes3; break;
    }
    const unsigned long long start = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (((dst | src | bytes) & 15ull) == 0) {
        uint4* d = (uint4*)dst;
        const uint4* s = (const uint4*)src;
        for (unsigned long long i = start; i < bytes / 16; i += stride) {
            d[i] = s[i];
        }
    } else {
        unsigned char* d = (unsigned char*)dst;
        const unsigned char* s = (const unsigned char*)src;
        for (unsigned long long i = start; i < bytes; i += stride) {
            d[i] = s[i];
        }
    }
}
