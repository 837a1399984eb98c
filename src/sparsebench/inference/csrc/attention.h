// Scaled dot-product attention for one CPU core per head (AVX-512), included inside
// csr_linear.cpp's namespace after exp16 and parallel_chunks.
//
// softmax(Q K^T * scale) V for each (batch, head), no mask, no dropout, with the head size a
// multiple of 16; any number of query rows and of keys (one query row against a cache of
// keys, as a decoder's step has it). Per head: K is transposed into a (D, Sp) buffer in
// 16 x 16 blocks, Sp the keys rounded up to 16 (the last block padded with zeros); then for
// each tile of up to 6 query rows, its scores are computed 64 columns at a time (24 sums in
// registers, one load of K^T serving 6 rows, the query element a broadcast operand), the
// padding's scores set to -inf, put through the softmax where they lie, and turned into the
// tile's output 64 head columns at a time the same way from V's rows. Q, K and V may be strided views (the head split of a
// Linear's (batch, seq, heads * D) output) as long as their last dimension is contiguous.
#if SB_HAVE_AVX512

constexpr int kAttentionTileRows = 6;

// s[n][j0 + 16c] = scale * sum_d q[n][d] kt[d][j0 + 16c] for n < N, c < NC.
template <int N, int NC>
inline void attention_scores_tile(const float* q, int64_t q_ld, const float* kt, int64_t S,
                                  int64_t D, float* s, float scale) {
  __m512 acc[N][NC];
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < NC; ++c) acc[n][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m512 k[NC];
    for (int c = 0; c < NC; ++c) k[c] = _mm512_loadu_ps(kt + d * S + 16 * c);
    for (int n = 0; n < N; ++n) {
      const __m512 qv = _mm512_set1_ps(q[n * q_ld + d]);
      for (int c = 0; c < NC; ++c) acc[n][c] = _mm512_fmadd_ps(qv, k[c], acc[n][c]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(s + n * S + 16 * c, _mm512_mul_ps(acc[n][c], sc));
}

// o[n][16c] = sum_{j < S} p[n][j] v[j][16c] for n < N, c < NC (p's rows p_ld floats apart).
template <int N, int NC>
inline void attention_output_tile(const float* p, int64_t p_ld, int64_t S, const float* v,
                                  int64_t v_ld, float* o, int64_t o_ld) {
  __m512 acc[N][NC];
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < NC; ++c) acc[n][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < S; ++j) {
    __m512 vj[NC];
    for (int c = 0; c < NC; ++c) vj[c] = _mm512_loadu_ps(v + j * v_ld + 16 * c);
    for (int n = 0; n < N; ++n) {
      const __m512 pv = _mm512_set1_ps(p[n * p_ld + j]);
      for (int c = 0; c < NC; ++c) acc[n][c] = _mm512_fmadd_ps(pv, vj[c], acc[n][c]);
    }
  }
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(o + n * o_ld + 16 * c, acc[n][c]);
}

// The tiles above for a run-time number of rows (1-6) and of 16-column vectors (1-4). Scores:
// a = q, b = K^T with rows S floats apart, out rows S apart too. Output: a = p with rows a_ld
// apart, summed over its first S columns; b = v.
template <int N>
void attention_tiles(bool scores, int nc, const float* a, int64_t a_ld, const float* b,
                     int64_t b_ld, int64_t S, int64_t D, float* out, int64_t out_ld,
                     float scale) {
#define SB_ATTENTION_NC(NC)                                                   \
  case NC:                                                                    \
    if (scores) attention_scores_tile<N, NC>(a, a_ld, b, S, D, out, scale);   \
    else attention_output_tile<N, NC>(a, a_ld, S, b, b_ld, out, out_ld);      \
    return;
  switch (nc) {
    SB_ATTENTION_NC(1)
    SB_ATTENTION_NC(2)
    SB_ATTENTION_NC(3)
    SB_ATTENTION_NC(4)
  }
#undef SB_ATTENTION_NC
}

void attention_rows(bool scores, int64_t n, int nc, const float* a, int64_t a_ld,
                    const float* b, int64_t b_ld, int64_t S, int64_t D, float* out,
                    int64_t out_ld, float scale) {
  switch (n) {
    case 1: return attention_tiles<1>(scores, nc, a, a_ld, b, b_ld, S, D, out, out_ld, scale);
    case 2: return attention_tiles<2>(scores, nc, a, a_ld, b, b_ld, S, D, out, out_ld, scale);
    case 3: return attention_tiles<3>(scores, nc, a, a_ld, b, b_ld, S, D, out, out_ld, scale);
    case 4: return attention_tiles<4>(scores, nc, a, a_ld, b, b_ld, S, D, out, out_ld, scale);
    case 5: return attention_tiles<5>(scores, nc, a, a_ld, b, b_ld, S, D, out, out_ld, scale);
    default: return attention_tiles<6>(scores, nc, a, a_ld, b, b_ld, S, D, out, out_ld, scale);
  }
}

// In place: each of the n rows of p (S floats, S % 16 == 0) becomes its softmax.
void softmax_rows(float* p, int64_t n, int64_t S) {
  for (int64_t i = 0; i < n; ++i) {
    float* r = p + i * S;
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < S; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(r + j));
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < S; j += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(r + j), mx));
      _mm512_storeu_ps(r + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
    for (int64_t j = 0; j < S; j += 16) _mm512_storeu_ps(r + j, _mm512_mul_ps(_mm512_loadu_ps(r + j), inv));
  }
}

// dst[c][r] = src[r][c] for a 16 x 16 block: unpacks pair rows within 128-bit lanes, then
// a 4 x 4 transpose of the lanes.
inline void transpose16x16(const float* src, int64_t src_ld, float* dst, int64_t dst_ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_ld);
  for (int i = 0; i < 8; ++i) {  // lane L of t[2i]: r[2i][4L], r[2i+1][4L], r[2i][4L+1], ...
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // lane L of r[4g + x]: rows 4g..4g+3 at column 4L + x
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int x = 0; x < 4; ++x) {  // column 4L + x gathers lane L of r[x], r[4+x], r[8+x], r[12+x]
    const __m512 v0 = _mm512_shuffle_f32x4(r[x], r[4 + x], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(r[x], r[4 + x], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + x], r[12 + x], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + x], r[12 + x], 0xEE);
    _mm512_storeu_ps(dst + x * dst_ld, _mm512_shuffle_f32x4(v0, v2, 0x88));
    _mm512_storeu_ps(dst + (4 + x) * dst_ld, _mm512_shuffle_f32x4(v0, v2, 0xDD));
    _mm512_storeu_ps(dst + (8 + x) * dst_ld, _mm512_shuffle_f32x4(v1, v3, 0x88));
    _mm512_storeu_ps(dst + (12 + x) * dst_ld, _mm512_shuffle_f32x4(v1, v3, 0xDD));
  }
}

// The keys rounded up to whole vectors: K^T's columns and a row of scores.
inline int64_t attention_padded_keys(int64_t Sk) { return (Sk + 15) / 16 * 16; }

// Floats of scratch one head needs: K^T and one tile's rows of scores.
inline int64_t attention_buffer_floats(int64_t Sk, int64_t D) {
  return (D + kAttentionTileRows) * attention_padded_keys(Sk);
}

// One head: q (Sq rows of D), k and v (Sk rows of D), rows `*_ld` floats apart, o like q;
// buf holds attention_buffer_floats(Sk, D). Each tile of rows goes through scores, softmax
// and output in turn, so its scores stay in L1.
void attention_head(const float* q, int64_t q_ld, const float* k, int64_t k_ld, const float* v,
                    int64_t v_ld, float* o, int64_t o_ld, int64_t Sq, int64_t Sk, int64_t D,
                    float scale, float* buf) {
  const int64_t Sp = attention_padded_keys(Sk);
  float* kt = buf;          // (D, Sp)
  float* p = buf + D * Sp;  // (kAttentionTileRows, Sp)
  const int64_t whole = Sk / 16 * 16;
  for (int64_t j = 0; j < whole; j += 16)
    for (int64_t d = 0; d < D; d += 16) transpose16x16(k + j * k_ld + d, k_ld, kt + d * Sp + j, Sp);
  if (whole < Sk) {  // the last keys through a block padded with zero rows
    alignas(64) float block[16 * 16];
    for (int64_t d = 0; d < D; d += 16) {
      std::fill(block, block + 16 * 16, 0.f);
      for (int64_t j = whole; j < Sk; ++j)
        std::copy(k + j * k_ld + d, k + j * k_ld + d + 16, block + (j - whole) * 16);
      transpose16x16(block, 16, kt + d * Sp + whole, Sp);
    }
  }
  for (int64_t i0 = 0; i0 < Sq; i0 += kAttentionTileRows) {
    const int64_t n = std::min<int64_t>(kAttentionTileRows, Sq - i0);
    for (int64_t j0 = 0; j0 < Sp; j0 += 64)
      attention_rows(true, n, static_cast<int>(std::min<int64_t>(64, Sp - j0) / 16),
                     q + i0 * q_ld, q_ld, kt + j0, 0, Sp, D, p + j0, Sp, scale);
    for (int64_t r = 0; r < n; ++r)  // the padding's scores: no weight after the softmax
      std::fill(p + r * Sp + Sk, p + (r + 1) * Sp, -std::numeric_limits<float>::infinity());
    softmax_rows(p, n, Sp);
    for (int64_t d0 = 0; d0 < D; d0 += 64)
      attention_rows(false, n, static_cast<int>(std::min<int64_t>(64, D - d0) / 16),
                     p, Sp, v + d0, v_ld, Sk, D, o + i0 * o_ld + d0, o_ld, 0.f);
  }
}
#endif  // SB_HAVE_AVX512

// softmax(q k^T * scale) v for q, k, v of shape (B, H, S, D), last dimension contiguous.
// Returns (B, H, S, D) as a view of a (B, S, H, D) tensor: the layout a Transformer turns
// back into (B, S, H * D) without a copy.
at::Tensor attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             double scale, int64_t threading) {
#if SB_HAVE_AVX512
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() &&
                  q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "attention_forward: q must be (batch, heads, queries, head) and k, v (batch, "
              "heads, keys, head) with the same batch, heads and head size");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat, "attention_forward: float32 only");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "attention_forward: the head dimension must be contiguous");
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), Sk = k.size(2), D = q.size(3);
  TORCH_CHECK(D % 16 == 0 && D > 0 && Sq > 0 && Sk > 0,
              "attention_forward: the head size must be a multiple of 16 and there must be "
              "queries and keys, got head ", D, ", ", Sq, " queries and ", Sk, " keys");
  at::Tensor out = at::empty({B, Sq, H, D}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (threading < 0) threading = kAdaptive;
  // A head's rows lie H * D floats apart (the head split of a Linear's output), too far
  // apart for the hardware prefetcher: each row's first line would wait on L3 or memory.
  // Asking for the next head's rows (to L2) while this one computes hides that wait.
  auto prefetch_head = [&](int64_t c) {
    if (c >= B * H) return;
    const int64_t b = c / H, h = c % H;
    for (const at::Tensor* t : {&q, &k, &v}) {
      const char* base = reinterpret_cast<const char*>(t->data_ptr<float>() +
                                                       b * t->stride(0) + h * t->stride(1));
      for (int64_t j = 0; j < t->size(2); ++j)
        for (int64_t byte = 0; byte < D * 4; byte += 64)
          _mm_prefetch(base + j * t->stride(2) * 4 + byte, _MM_HINT_T1);
    }
  };
  parallel_chunks(B * H, threading, [&](int64_t c) {
    const int64_t b = c / H, h = c % H;
    prefetch_head(c + 1);
    thread_local std::vector<float> buf;
    buf.resize(attention_buffer_floats(Sk, D));
    attention_head(qp + b * q.stride(0) + h * q.stride(1), q.stride(2),
                   kp + b * k.stride(0) + h * k.stride(1), k.stride(2),
                   vp + b * v.stride(0) + h * v.stride(1), v.stride(2),
                   op + (b * Sq * H + h) * D, H * D, Sq, Sk, D, static_cast<float>(scale),
                   buf.data());
  });
  return out.permute({0, 2, 1, 3});
#else
  TORCH_CHECK(false, "attention_forward needs AVX-512");
#endif
}
