// Host build of the device pipeline: the same per-element functions as
// edge/kernels/riad_kernels.cu, called in the same stage order by plain loops, so
// tests/test_kernels_host.py can compare them with the numpy reference without a GPU.
#include <algorithm>
#include <vector>

#include "riad_math.cuh"

extern "C" {

void host_expand_variants(const float* frame, const unsigned char* pixel_set, int num_sizes, int num_sets,
                          int height, int width, float* variants) {
    const int total = num_sizes * num_sets * 3 * height * width;
    for (int i = 0; i < total; ++i) {
        variants[i] = riad::variant_value_at(i, frame, pixel_set, num_sets, height, width);
    }
}

void host_recombine(const float* outputs, const unsigned char* pixel_set, int num_sizes, int num_sets, int height,
                    int width, float* reconstructions) {
    const int total = num_sizes * 3 * height * width;
    for (int i = 0; i < total; ++i) {
        reconstructions[i] = riad::recombined_value_at(i, outputs, pixel_set, num_sets, height, width);
    }
}

// The device pipeline after the network, stage by stage as gpu_map.py launches it.
// Writes the unsmoothed map, the smoothed map and the score.
void host_anomaly_map(const float* frame, const float* outputs, const unsigned char* pixel_set, int num_sizes, int num_sets, int height, int width, int levels, float c, const float* taps,
                      int radius, float* raw_map, float* amap, float* score) {
    const int plane = height * width;
    const int pyramid_size = riad::pyramid_offset(levels, height, width);
    std::vector<float> gray((1 + num_sizes) * pyramid_size), gms(num_sizes * pyramid_size), scratch(plane);

    for (int i = 0; i < plane; ++i) gray[i] = riad::channel_mean3(frame[i], frame[plane + i], frame[2 * plane + i]);
    for (int k = 0; k < num_sizes; ++k) {
        for (int pixel = 0; pixel < plane; ++pixel) {
            float rgb[3];
            for (int ch = 0; ch < 3; ++ch) {
                rgb[ch] = riad::recombined_value_at((k * 3 + ch) * plane + pixel, outputs, pixel_set, num_sets,
                                                    height, width);
            }
            gray[(1 + k) * pyramid_size + pixel] = riad::channel_mean3(rgb[0], rgb[1], rgb[2]);
        }
    }
    for (int level = 1; level < levels; ++level) {
        const int h = height >> level, w = width >> level;
        for (int image = 0; image <= num_sizes; ++image) {
            float* pyramid = gray.data() + image * pyramid_size;
            const float* above = pyramid + riad::pyramid_offset(level - 1, height, width);
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x)
                    pyramid[riad::pyramid_offset(level, height, width) + y * w + x] =
                        riad::average_pool2_at(above, y, x, width >> (level - 1));
        }
    }
    for (int level = 0; level < levels; ++level) {
        const int h = height >> level, w = width >> level, offset = riad::pyramid_offset(level, height, width);
        for (int k = 0; k < num_sizes; ++k)
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x)
                    gms[k * pyramid_size + offset + y * w + x] = riad::gms_at(
                        gray.data() + offset, gray.data() + (1 + k) * pyramid_size + offset, y, x, h, w, c);
    }
    for (int i = 0; i < plane; ++i) {
        raw_map[i] = riad::raw_anomaly_at(gms.data(), pyramid_size, num_sizes, levels, i / width, i % width, height,
                                          width);
    }
    for (int i = 0; i < plane; ++i)
        scratch[i] = riad::gaussian_at(raw_map, taps, radius, i / width, i % width, height, width, 0);
    for (int i = 0; i < plane; ++i)
        amap[i] = riad::gaussian_at(scratch.data(), taps, radius, i / width, i % width, height, width, 1);
    *score = *std::max_element(amap, amap + plane);
}

}  // extern "C"
