// The inputs of a graph replay into their static buffers, up to four in one launch, and the
// padded rows after each input filled with its pad value. blockIdx.y picks the job.
//
// Job j: copy `bytes` bytes from `src` to `dst`, then fill `dst[bytes..total)` with the 32-bit
// `pattern`, byte i of the buffer taking byte (i % 4) of it (little-endian; a 16-bit pad value
// is given twice in the pattern). `total == bytes` fills nothing. `dst` is 256-byte aligned
// (a buffer start), so the pattern's phase follows element boundaries.
//
// 16-byte words for the copy when every address and size allows, bytes otherwise. No header is
// included (NVRTC runs without an include path).
extern "C" __global__ void pad_copy(
    unsigned long long dst0, unsigned long long src0, unsigned long long bytes0,
    unsigned long long total0, unsigned long long pattern0,
    unsigned long long dst1, unsigned long long src1, unsigned long long bytes1,
    unsigned long long total1, unsigned long long pattern1,
    unsigned long long dst2, unsigned long long src2, unsigned long long bytes2,
    unsigned long long total2, unsigned long long pattern2,
    unsigned long long dst3, unsigned long long src3, unsigned long long bytes3,
    unsigned long long total3, unsigned long long pattern3)
{
    unsigned long long dst, src, bytes, total, pattern;
    switch (blockIdx.y) {
        case 0: dst = dst0; src = src0; bytes = bytes0; total = total0; pattern = pattern0; break;
        case 1: dst = dst1; src = src1; bytes = bytes1; total = total1; pattern = pattern1; break;
        case 2: dst = dst2; src = src2; bytes = bytes2; total = total2; pattern = pattern2; break;
        default: dst = dst3; src = src3; bytes = bytes3; total = total3; pattern = pattern3; break;
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
    unsigned char* d = (unsigned char*)dst;
    for (unsigned long long i = bytes + start; i < total; i += stride) {
        d[i] = (unsigned char)(pattern >> (8ull * (i & 3ull)));
    }
}
