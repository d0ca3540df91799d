// RIAD per-pixel arithmetic, shared by the CUDA kernels (riad_kernels.cu) and the host
// build that tests them against the numpy reference (tests/kernel_host_launch.cpp).
//
// Every function computes one output element and mirrors edge/method/anomaly_map.py and
// edge/method/masks.py operation by operation, in the same float32 order of evaluation, so the
// device map equals the reference up to the Gaussian's summation order (OpenCV's) and the
// order the unsmoothed map averages its (cell size, plane) pairs and levels in (numpy's
// raw_anomaly_map averages the pairs' GMS before upsampling, here each pair is upsampled).
// Compile without contraction (nvcc --fmad=false, g++ -ffp-contract=off): an FMA
// rounds once where numpy rounds twice.
//
// Layouts: images are planar (C, H, W) float32; a "pyramid" is levels 0..L-1 of an
// (H, W) gray image stored one after another, level l being (H >> l, W >> l).
#pragma once

#ifndef __CUDACC__
#include <math.h>
#define __host__
#define __device__
#endif

#define RIAD_FN __host__ __device__ inline

namespace riad {

// ---- masks (edge/method/masks.py) ---------------------------------------------------

// One element of the network input: variant v = k_index * num_sets + set hides the
// pixels whose set (for that cell size) is `set`; the net takes them as they are.
// `pixel_set` is (K, H, W): the set that hides each pixel for each cell size.
RIAD_FN float variant_value_at(int index, const float* frame, const unsigned char* pixel_set, int num_sets,
                               int height, int width) {
    const int plane = height * width;
    const int pixel = index % plane;
    const int channel = (index / plane) % 3;
    const int variant = index / (3 * plane);
    const int k_index = variant / num_sets;
    const int set = variant % num_sets;
    // masked_variants multiplies by (1 - mask): a hidden pixel becomes 0.
    return pixel_set[k_index * plane + pixel] == set ? 0.0f : frame[channel * plane + pixel];
}

// One element of recombine(): pixel taken from the variant that hid it.
RIAD_FN float recombined_value_at(int index, const float* outputs, const unsigned char* pixel_set, int num_sets,
                                  int height, int width) {
    const int plane = height * width;
    const int pixel = index % plane;
    const int channel = (index / plane) % 3;
    const int k_index = index / (3 * plane);
    const int variant = k_index * num_sets + pixel_set[k_index * plane + pixel];
    return outputs[(variant * 3 + channel) * plane + pixel];
}

// ---- anomaly map (edge/method/anomaly_map.py) ---------------------------------------

// channel_mean: numpy sums the 3 channels in order, then divides by the count.
RIAD_FN float channel_mean3(float r, float g, float b) { return ((r + g) + b) / 3.0f; }

// Gray value with zero padding outside the image (conv2d padding=1).
RIAD_FN float padded(const float* gray, int y, int x, int height, int width) {
    return (y < 0 || y >= height || x < 0 || x >= width) ? 0.0f : gray[y * width + x];
}

// prewitt_magnitude: column sums over 3 rows give gx, row sums over 3 columns give gy.
RIAD_FN float prewitt_magnitude_at(const float* gray, int y, int x, int height, int width) {
    const float left = (padded(gray, y - 1, x - 1, height, width) + padded(gray, y, x - 1, height, width)) +
                       padded(gray, y + 1, x - 1, height, width);
    const float right = (padded(gray, y - 1, x + 1, height, width) + padded(gray, y, x + 1, height, width)) +
                        padded(gray, y + 1, x + 1, height, width);
    const float above = (padded(gray, y - 1, x - 1, height, width) + padded(gray, y - 1, x, height, width)) +
                        padded(gray, y - 1, x + 1, height, width);
    const float below = (padded(gray, y + 1, x - 1, height, width) + padded(gray, y + 1, x, height, width)) +
                        padded(gray, y + 1, x + 1, height, width);
    const float gx = (left - right) / 3.0f;
    const float gy = (above - below) / 3.0f;
    return sqrtf(gx * gx + gy * gy);
}

// gms: (2 ga gb + c) / (ga^2 + gb^2 + c).
RIAD_FN float gms_value(float ga, float gb, float c) {
    return (2.0f * ga * gb + c) / (ga * ga + gb * gb + c);
}

RIAD_FN float gms_at(const float* gray_a, const float* gray_b, int y, int x, int height, int width, float c) {
    return gms_value(prewitt_magnitude_at(gray_a, y, x, height, width),
                     prewitt_magnitude_at(gray_b, y, x, height, width), c);
}

// average_pool2: numpy's reduction adds each row pair first, then the two rows.
RIAD_FN float average_pool2_at(const float* gray, int y, int x, int width) {
    const float* top = gray + (2 * y) * width + 2 * x;
    const float* bottom = top + width;
    return ((top[0] + top[1]) + (bottom[0] + bottom[1])) / 4.0f;
}

// One axis of upsample_bilinear: half-pixel centres, clamped (torch align_corners=False).
// The source coordinate is computed in double, as numpy does.
struct LinearTap {
    int i0, i1;
    float weight;
};

RIAD_FN LinearTap linear_tap(int out_index, int out_len, int in_len) {
    const double scale = (double)in_len / (double)out_len;
    double src = ((double)out_index + 0.5) * scale - 0.5;
    if (src < 0.0) src = 0.0;
    int i0 = (int)floor(src);
    if (i0 > in_len - 1) i0 = in_len - 1;
    const int i1 = i0 + 1 < in_len - 1 ? i0 + 1 : in_len - 1;
    LinearTap tap = {i0, i1, (float)(src - (double)i0)};
    return tap;
}

// upsample_bilinear at (y, x) of an (out_h, out_w) output: rows first, then columns.
RIAD_FN float upsample_bilinear_at(const float* gray, int in_h, int in_w, int y, int x, int out_h, int out_w) {
    const LinearTap r = linear_tap(y, out_h, in_h);
    const LinearTap c = linear_tap(x, out_w, in_w);
    const float column0 = gray[r.i0 * in_w + c.i0] * (1.0f - r.weight) + gray[r.i1 * in_w + c.i0] * r.weight;
    const float column1 = gray[r.i0 * in_w + c.i1] * (1.0f - r.weight) + gray[r.i1 * in_w + c.i1] * r.weight;
    return column0 * (1.0f - c.weight) + column1 * c.weight;
}

RIAD_FN int pyramid_offset(int level, int height, int width) {
    int offset = 0;
    for (int l = 0; l < level; ++l) offset += (height >> l) * (width >> l);
    return offset;
}

// msgms_map at (y, x) from a pyramid of GMS maps: levels upsampled and averaged.
RIAD_FN float msgms_at(const float* gms_pyramid, int levels, int y, int x, int height, int width) {
    float total = 0.0f;
    for (int level = 0; level < levels; ++level) {
        total += upsample_bilinear_at(gms_pyramid + pyramid_offset(level, height, width), height >> level,
                                      width >> level, y, x, height, width);
    }
    return total / (float)levels;
}

// anomaly_map before smoothing: mean of 1 - msgms over the (cell size, plane) pairs (one
// plane each for the grey map). `gms_pyramids` holds one pyramid per pair, `pyramid_size` floats apart.
RIAD_FN float raw_anomaly_at(const float* gms_pyramids, int pyramid_size, int num_pairs, int levels, int y, int x,
                             int height, int width) {
    float sum = 0.0f;
    for (int pair = 0; pair < num_pairs; ++pair) {
        sum += 1.0f - msgms_at(gms_pyramids + pair * pyramid_size, levels, y, x, height, width);
    }
    return sum / (float)num_pairs;
}

// OpenCV's BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), repeated for long kernels.
RIAD_FN int reflect101(int index, int length) {
    if (length == 1) return 0;
    while (index < 0 || index >= length) {
        index = index < 0 ? -index : 2 * length - 2 - index;
    }
    return index;
}

// One tap sum of the separable Gaussian along x (step 1) or y (step width).
RIAD_FN float gaussian_at(const float* image, const float* taps, int radius, int y, int x, int height, int width,
                          int vertical) {
    float sum = 0.0f;
    for (int t = -radius; t <= radius; ++t) {
        const int yy = vertical ? reflect101(y + t, height) : y;
        const int xx = vertical ? x : reflect101(x + t, width);
        sum += taps[t + radius] * image[yy * width + xx];
    }
    return sum;
}

// excess_over_reference: how far the smoothed map rises above a defect-free part's, as
// numpy's max(map - reference, 0) gives it, bit for bit: one float32 subtraction, then
// +0 for anything not above zero (-0 included) and NaN kept (so a value nothing wrote
// still shows).
RIAD_FN float excess_over_reference(float value, float reference) {
    const float excess = value - reference;
    return excess <= 0.0f ? 0.0f : excess;
}

}  // namespace riad
