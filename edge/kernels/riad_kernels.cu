// RIAD on the device: masked variants in, anomaly map and score out.
// Each kernel computes one element per thread with the shared arithmetic of
// riad_math.cuh; edge/backends/gpu_map.py launches them in this file's order, one stream.
// Buffers (float32 unless noted), for an H x W input, K cell sizes, n sets, L levels:
//   frame (3,H,W) RGB in [0, 1]; pixel_set uint8 (K,H,W);
//   variants and outputs (K*n,3,H,W); gray: (1+K)*P pyramids, P planes compared per image
//   (1: the channel mean; 3: R, G, B each, MapSpec.per_channel): the original's P first,
//   then each cell size's P; gms: K*P pyramids, one per (k, plane) pair, k-major;
//   map, scratch, reference (H,W); score: 1 float.
#include "riad_math.cuh"

__device__ inline int thread_index() { return blockIdx.x * blockDim.x + threadIdx.x; }

extern "C" __global__ void expand_variants(const float* frame, const unsigned char* pixel_set, int num_sizes, int num_sets, int height, int width, float* variants) {
    const int i = thread_index();
    if (i >= num_sizes * num_sets * 3 * height * width) return;
    variants[i] = riad::variant_value_at(i, frame, pixel_set, num_sets, height, width);
}

// Level 0 of the planes compared (1: the channel mean; 3: each channel) into `first`'s pyramids.
__device__ inline void write_planes(const float rgb[3], int planes, int pixel, int pyramid_size, float* first) {
    if (planes == 1) {
        first[pixel] = riad::channel_mean3(rgb[0], rgb[1], rgb[2]);
        return;
    }
    for (int channel = 0; channel < 3; ++channel) first[channel * pyramid_size + pixel] = rgb[channel];
}

// Level 0 of the original's pyramids.
extern "C" __global__ void frame_gray(const float* frame, int planes, int height, int width, int pyramid_size,
                                      float* gray_pyramids) {
    const int i = thread_index();
    const int plane = height * width;
    if (i >= plane) return;
    const float rgb[3] = {frame[i], frame[plane + i], frame[2 * plane + i]};
    write_planes(rgb, planes, i, pyramid_size, gray_pyramids);
}

// Level 0 of each cell size's reconstruction pyramids: recombine, then its planes.
extern "C" __global__ void recombined_gray(const float* outputs, const unsigned char* pixel_set, int num_sizes,
                                           int num_sets, int planes, int height, int width, int pyramid_size,
                                           float* gray_pyramids) {
    const int i = thread_index();
    const int plane = height * width;
    if (i >= num_sizes * plane) return;
    const int k_index = i / plane;
    const int pixel = i % plane;
    float rgb[3];
    for (int channel = 0; channel < 3; ++channel) {
        rgb[channel] = riad::recombined_value_at((k_index * 3 + channel) * plane + pixel, outputs, pixel_set,
                                                 num_sets, height, width);
    }
    write_planes(rgb, planes, pixel, pyramid_size, gray_pyramids + (1 + k_index) * planes * pyramid_size);
}

// Level `level` (>= 1) of `count` gray pyramids from the level above.
extern "C" __global__ void pool_level(float* pyramids, int count, int pyramid_size, int level, int height,
                                      int width) {
    const int i = thread_index();
    const int h = height >> level, w = width >> level;
    if (i >= count * h * w) return;
    float* pyramid = pyramids + (i / (h * w)) * pyramid_size;
    const int pixel = i % (h * w);
    const float* above = pyramid + riad::pyramid_offset(level - 1, height, width);
    pyramid[riad::pyramid_offset(level, height, width) + pixel] =
        riad::average_pool2_at(above, pixel / w, pixel % w, width >> (level - 1));
}

// GMS at one level for each of the num_pairs = K * planes (cell size, plane) pairs:
// pair p compares the original's plane p % planes with pyramid planes + p.
extern "C" __global__ void gms_level(const float* gray_pyramids, int num_pairs, int planes, int pyramid_size,
                                     int level, int height, int width, float c, float* gms_pyramids) {
    const int i = thread_index();
    const int h = height >> level, w = width >> level;
    if (i >= num_pairs * h * w) return;
    const int pair = i / (h * w);
    const int pixel = i % (h * w);
    const int offset = riad::pyramid_offset(level, height, width);
    const float* original = gray_pyramids + (pair % planes) * pyramid_size + offset;
    const float* reconstruction = gray_pyramids + (planes + pair) * pyramid_size + offset;
    gms_pyramids[pair * pyramid_size + offset + pixel] =
        riad::gms_at(original, reconstruction, pixel / w, pixel % w, h, w, c);
}

// Unsmoothed map: 1 - multi-scale GMS, averaged over the num_pairs = K * planes (cell size, plane) pairs.
extern "C" __global__ void raw_anomaly(const float* gms_pyramids, int num_pairs, int pyramid_size, int levels,
                                       int height, int width, float* amap) {
    const int i = thread_index();
    if (i >= height * width) return;
    amap[i] = riad::raw_anomaly_at(gms_pyramids, pyramid_size, num_pairs, levels, i / width, i % width, height,
                                   width);
}

// One pass of the separable Gaussian: along x, then (vertical = 1) along y.
extern "C" __global__ void gaussian_pass(const float* image, const float* taps, int radius, int height, int width,
                                         int vertical, float* out) {
    const int i = thread_index();
    if (i >= height * width) return;
    out[i] = riad::gaussian_at(image, taps, radius, i / width, i % width, height, width, vertical);
}

// The map above a defect-free part's (the manifest's reference map), in place, after the
// Gaussian; gpu_map.py skips it for a manifest without a reference.
extern "C" __global__ void subtract_reference(float* map, const float* reference, int count) {
    const int i = thread_index();
    if (i >= count) return;
    map[i] = riad::excess_over_reference(map[i], reference[i]);
}

#define MAX_THREADS 256

// The score: the map's maximum, by one block of MAX_THREADS threads.
extern "C" __global__ void max_value(const float* values, int count, float* result) {
    __shared__ float partial[MAX_THREADS];
    float best = __int_as_float(0xff800000);  // -inf, with no math.h under NVRTC
    for (int i = threadIdx.x; i < count; i += blockDim.x) best = fmaxf(best, values[i]);
    partial[threadIdx.x] = best;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + stride]);
        __syncthreads();
    }
    if (threadIdx.x == 0) *result = partial[0];
}
