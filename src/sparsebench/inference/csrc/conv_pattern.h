// Convolutions through code compiled for their weight's pattern (pattern_jit.h), the kernel of
// the large Linear products, included inside csr_linear.cpp after the convolution helpers.
//
// A convolution is a product of its (out, C*kh*kw) weight with, for each output position,
// the column of inputs its taps read. In NCHW those columns already lie feature-major: tap k
// of position p reads X[foff[k] + p] (conv_feature_offsets), so packing 16 positions into
// the compiled code's slice, (features, 16), is one 16-float copy per feature, with no
// transpose; and a slice's sums, (out, 16), are 16 consecutive positions of each output
// channel, written back with one vector store per channel. conv_rows and the count-class
// layout reach 20-50 GFLOP/s on ResNet-50's layers at batch 8 (one thread; the compiled
// Linear products of BERT 85-90% of this core's peak of about 115).
//
// Positions are numbered across the images of a call (image n's position p is number
// n * per_image + p), so a batch of small maps fills whole slices: 7x7 maps at batch 8 are
// 392 positions, 6.1 tiles of 64, against 8 tiles of which a quarter is idle image by image.
// A slice that crosses from one image to the next is packed and written in two masked parts.
#pragma once

#if SB_HAVE_PATTERN_JIT

// Positions [0, images * per_image) of a convolution's input and output.
struct ConvPatternSpan {
  const float* x;     // image 0's input: in place, or a prepared buffer (conv_prepare)
  int64_t x_image;    // floats from one image's input to the next
  int64_t per_image;  // positions per image
  int64_t images;
  float* y;           // image 0's output, channel rows ldy floats apart
  int64_t y_image;    // floats from one image's output to the next
  int64_t ldy;
  const float* r;     // a residual laid out as y (added before the ReLU), or null
  bool stream;        // whole aligned vectors of y written around the caches (stream_output)
};

// One image's part of a slice: `count` positions from position p of image n, in lanes
// [lane, lane + count).
struct ConvSliceSegment {
  int64_t n, p;
  int lane, count;
  __mmask16 mask() const { return static_cast<__mmask16>(((1u << count) - 1) << lane); }
};

// The segments of the slice of `len` (<= 16) positions from number q; returns how many.
inline int conv_slice_segments(const ConvPatternSpan& s, int64_t q, int len,
                               ConvSliceSegment* seg) {
  int k = 0;
  for (int lane = 0; lane < len;) {
    const int64_t n = (q + lane) / s.per_image, p = (q + lane) % s.per_image;
    const int count = static_cast<int>(std::min<int64_t>(len - lane, s.per_image - p));
    seg[k++] = {n, p, lane, count};
    lane += count;
  }
  return k;
}

// Features [f0, f1) of `slices` slices into xb (slice i at xb + i * kb * 16, one aligned
// 16-float row per feature). Lanes no position fills are zero.
inline void conv_pattern_pack(const ConvPatternSpan& s, const int32_t* foff, int64_t f0,
                              int64_t f1, int64_t kb, const ConvSliceSegment (*seg)[16],
                              const int* nseg, int slices, float* xb) {
  for (int i = 0; i < slices; ++i) {
    float* dst = xb + i * kb * kPatternSlice - f0 * kPatternSlice;
    const ConvSliceSegment& a = seg[i][0];
    if (nseg[i] == 1 && a.count == 16) {  // the common case: one image, a whole vector
      const float* src = s.x + a.n * s.x_image + a.p;
      for (int64_t f = f0; f < f1; ++f)
        _mm512_store_ps(dst + f * kPatternSlice, _mm512_loadu_ps(src + foff[f]));
      continue;
    }
    for (int64_t f = f0; f < f1; ++f) {
      __m512 v = _mm512_setzero_ps();
      for (int k = 0; k < nseg[i]; ++k) {
        const ConvSliceSegment& g = seg[i][k];
        // Lanes outside the mask are not read (AVX-512 suppresses their faults), so the
        // address may start before the image's run.
        v = _mm512_mask_loadu_ps(v, g.mask(), s.x + g.n * s.x_image + foff[f] + g.p - g.lane);
      }
      _mm512_store_ps(dst + f * kPatternSlice, v);
    }
  }
}

// Rows [o0, o1) of the finished sums (slice i at sums + i * out * 16) plus the residual,
// through the ReLU, into their positions of y.
inline void conv_pattern_write(const ConvPatternSpan& s, const float* sums, int64_t out,
                               int64_t o0, int64_t o1, const ConvSliceSegment (*seg)[16],
                               const int* nseg, int slices, bool relu) {
  for (int i = 0; i < slices; ++i) {
    const float* si = sums + i * out * kPatternSlice;
    for (int k = 0; k < nseg[i]; ++k) {
      const ConvSliceSegment& g = seg[i][k];
      const __mmask16 m = g.mask();
      const int64_t at = g.n * s.y_image + g.p - g.lane;  // lane 0's place in row 0
      const bool whole = s.stream && g.count == 16 &&
                         reinterpret_cast<std::uintptr_t>(s.y + at) % 64 == 0 && s.ldy % 16 == 0;
      for (int64_t o = o0; o < o1; ++o) {
        __m512 v = _mm512_load_ps(si + o * kPatternSlice);
        if (s.r) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, s.r + at + o * s.ldy));
        if (relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);  // NaN stays NaN
        if (whole)
          _mm512_stream_ps(s.y + at + o * s.ldy, v);
        else
          _mm512_mask_storeu_ps(s.y + at + o * s.ldy, m, v);
      }
    }
  }
}

// Positions [qa, qb) of span s, groups of rows [ga, gb), through the compiled code of L (a
// weight of `cols` columns, column k read at foff[k]), in tiles of 64: for each block of
// features, the tile's inputs are packed (kb x 64 floats, in L2) and each group of rows runs
// its chunk over them; a group's rows are written as soon as its last chunk has run, while
// its sums are in L1.
inline void conv_pattern_positions(const PanelLayout& L, const int32_t* foff, int64_t cols,
                                   const ConvPatternSpan& s, int64_t qa, int64_t qb,
                                   int64_t ga, int64_t gb, const float* bias, bool relu,
                                   int64_t out) {
  alignas(64) static const float kNoBias[kPatternGroupRows] = {};
  const int64_t R = L.group_rows, groups = (out + R - 1) / R, kb = L.kblock;
  thread_local std::vector<float> xstore, sstore;
  thread_local std::vector<int64_t> last_store;
  float* xb = aligned_floats(xstore, 4 * kb * kPatternSlice);
  float* sums = aligned_floats(sstore, 4 * out * kPatternSlice);
  // The last block in which each group has a chunk (block 0 always has one: the bias).
  last_store.assign(groups, 0);
  for (int64_t g = ga; g < gb; ++g)
    for (int64_t t = 0; t < L.blocks; ++t)
      if (L.chunk_code[g * L.blocks + t + 1] != L.chunk_code[g * L.blocks + t]) last_store[g] = t;
  ConvSliceSegment seg[4][16];
  int nseg[4];
  for (int64_t q0 = qa; q0 < qb; q0 += 4 * kPatternSlice) {
    const int64_t width = std::min<int64_t>(4 * kPatternSlice, qb - q0);
    const int slices = static_cast<int>((width + kPatternSlice - 1) / kPatternSlice);
    for (int i = 0; i < slices; ++i)
      nseg[i] = conv_slice_segments(s, q0 + i * kPatternSlice,
                                    static_cast<int>(std::min<int64_t>(16, width - 16 * i)),
                                    seg[i]);
    for (int64_t t = 0; t < L.blocks; ++t) {
      bool any = false;
      for (int64_t g = ga; g < gb && !any; ++g)
        any = L.chunk_code[g * L.blocks + t + 1] != L.chunk_code[g * L.blocks + t];
      if (!any) continue;
      conv_pattern_pack(s, foff, t * kb, std::min(cols, (t + 1) * kb), kb, seg, nseg, slices,
                        xb);
      for (int64_t g = ga; g < gb; ++g) {
        const int64_t k = g * L.blocks + t;
        if (L.chunk_code[k + 1] != L.chunk_code[k]) {
          const auto chunk = reinterpret_cast<PatternChunk>(L.code + L.chunk_code[k]);
          const float* w = L.values + L.chunk_w[k];
          const float* b = bias ? bias + g * R : kNoBias;
          for (int i = 0; i < slices; ++i)
            chunk(xb + i * kb * kPatternSlice, w, sums + (i * out + g * R) * kPatternSlice, b);
        }
        if (last_store[g] == t)
          conv_pattern_write(s, sums, out, g * R, std::min(out, (g + 1) * R), seg, nseg,
                             slices, relu);
      }
    }
  }
}

// How a call's work is split between threads: `tiles` tiles of positions, each tile's
// groups of rows in `parts` parts. Tiles alone where there are enough for every thread;
// with few positions (a 7x7 map at batch 1 is one tile) the rows are split too, each part
// packing the tile's inputs for itself.
struct ConvPatternSplit {
  int64_t tiles, parts, groups;
  int64_t chunks() const { return tiles * parts; }
  int64_t g0(int64_t c) const { return groups * (c % parts) / parts; }
  int64_t g1(int64_t c) const { return groups * (c % parts + 1) / parts; }
};
inline ConvPatternSplit conv_pattern_split(int64_t tiles, int64_t groups, bool serial,
                                           int64_t threads) {
  if (serial || tiles >= 4 * threads) return {tiles, 1, groups};
  return {tiles, std::min(groups, (4 * threads + tiles - 1) / tiles), groups};
}

// csr_conv2d through the compiled code of its weight (see the top of this file).
inline void conv_pattern(const ConvGeometry& g, const PanelLayout& L,
                         const std::vector<int32_t>& foff, const float* xs, int64_t N,
                         bool serial, int64_t threads, int64_t threading, const float* bp,
                         bool relu, const float* rs, float* yd, int64_t out) {
  const int64_t cols = g.C * g.kh * g.kw;
  const int64_t in_image = g.C * g.H * g.W, out_image = out * g.Ho() * g.Wo();
  const int64_t groups = (out + L.group_rows - 1) / L.group_rows;
  constexpr int64_t tile = 4 * kPatternSlice;
  if (g.in_place()) {  // the images themselves, all positions numbered together
    const int64_t HW = g.H * g.W, total = N * HW, tiles = (total + tile - 1) / tile;
    const ConvPatternSpan s{xs, in_image, HW, N, yd, out_image, HW, rs,
                            stream_output(N * out_image)};
    if (serial) {
      conv_pattern_positions(L, foff.data(), cols, s, 0, total, 0, groups, bp, relu, out);
      if (s.stream) _mm_sfence();
      return;
    }
    const ConvPatternSplit split = conv_pattern_split(tiles, groups, serial, threads);
    if (split.parts == 1) {  // runs of tiles, a few per thread
      const int64_t chunks = std::min<int64_t>(tiles, threads * kChunksPerThread);
      parallel_chunks(chunks, threading, [&](int64_t c) {
        const int64_t qa = tiles * c / chunks * tile;
        const int64_t qb = std::min(total, tiles * (c + 1) / chunks * tile);
        conv_pattern_positions(L, foff.data(), cols, s, qa, qb, 0, groups, bp, relu, out);
        if (s.stream) _mm_sfence();  // streamed lines visible before another thread reads y
      });
      return;
    }
    parallel_chunks(split.chunks(), threading, [&](int64_t c) {
      const int64_t qa = c / split.parts * tile, qb = std::min(total, qa + tile);
      conv_pattern_positions(L, foff.data(), cols, s, qa, qb, split.g0(c), split.g1(c), bp,
                             relu, out);
      if (s.stream) _mm_sfence();
    });
    return;
  }
  // Padded or strided: each image prepared into its phase planes (conv_prepare), its L()
  // positions (rows Ws() wide, the columns past Wo() computed and dropped) into a buffer,
  // then trimmed into y with the residual and ReLU (conv_trim).
  const int64_t len = g.L();
  const auto image_span = [&](const float* xbuf, float* ybuf) {
    return ConvPatternSpan{xbuf, 0, len, 1, ybuf, 0, len, nullptr, false};
  };
  if (serial || N >= 2 * threads) {
    conv_whole_images(g, xs, N, out, serial, threads, threading, relu, rs, yd,
                      [&](const float* xbuf, float* ybuf) {
                        conv_pattern_positions(L, foff.data(), cols, image_span(xbuf, ybuf), 0,
                                               len, 0, groups, bp, relu && !rs, out);
                      });
    return;
  }
  // Fewer images than threads: prepare them all, then the threads take tiles (and parts of
  // the rows where the tiles are too few).
  const int64_t buf_in = (g.image() + g.slack() + 15) / 16 * 16;
  const int64_t tiles = (len + tile - 1) / tile;
  std::vector<float> xstore, ystore;
  float* xbuf = aligned_floats(xstore, N * buf_in);
  float* ybuf = aligned_floats(ystore, N * out * len);
  for (int64_t n = 0; n < N; ++n) conv_prepare(g, xs + n * in_image, xbuf + n * buf_in);
  const ConvPatternSplit split = conv_pattern_split(N * tiles, groups, serial, threads);
  parallel_chunks(split.chunks(), threading, [&](int64_t c) {
    const int64_t t = c / split.parts, n = t / tiles, qa = (t % tiles) * tile;
    conv_pattern_positions(L, foff.data(), cols,
                           image_span(xbuf + n * buf_in, ybuf + n * out * len), qa,
                           std::min(len, qa + tile), split.g0(c), split.g1(c), bp,
                           relu && !rs, out);
  });
  for (int64_t n = 0; n < N; ++n)
    conv_trim(g, out, ybuf + n * out * len, yd + n * out_image, rs ? rs + n * out_image : nullptr,
              relu);
}

#endif  // SB_HAVE_PATTERN_JIT
