#include <immintrin.h>
#include <stdint.h>
// out[b, p*16:(p+1)*16] = base + sum_j val[j] * wp[p, idx[j], :]
void panels(int B, int npan, int K, int N, const float* base, const float* wp, float* out,
            const int32_t* idx, const float* val, const int64_t* start, const int64_t* end) {
  for (int p = 0; p < npan; p++) {
    const float* wpp = wp + (int64_t)p * K * 16;
    for (int b = 0; b < B; b++) {
      const float* bb = base + (int64_t)b * N + p * 16;
      __m256 a0 = _mm256_loadu_ps(bb), a1 = _mm256_loadu_ps(bb + 8);
      __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
      __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
      __m256 e0 = _mm256_setzero_ps(), e1 = _mm256_setzero_ps();
      int64_t j = start[b], e = end[b];
      for (; j + 4 <= e; j += 4) {
        const float* r0 = wpp + idx[j] * 16; const float* r1 = wpp + idx[j+1] * 16;
        const float* r2 = wpp + idx[j+2] * 16; const float* r3 = wpp + idx[j+3] * 16;
        __m256 v0 = _mm256_broadcast_ss(val + j), v1 = _mm256_broadcast_ss(val + j + 1);
        __m256 v2 = _mm256_broadcast_ss(val + j + 2), v3 = _mm256_broadcast_ss(val + j + 3);
        a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(r0), a0); a1 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(r0 + 8), a1);
        c0 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(r1), c0); c1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(r1 + 8), c1);
        d0 = _mm256_fmadd_ps(v2, _mm256_loadu_ps(r2), d0); d1 = _mm256_fmadd_ps(v2, _mm256_loadu_ps(r2 + 8), d1);
        e0 = _mm256_fmadd_ps(v3, _mm256_loadu_ps(r3), e0); e1 = _mm256_fmadd_ps(v3, _mm256_loadu_ps(r3 + 8), e1);
      }
      for (; j < e; j++) {
        const float* r0 = wpp + idx[j] * 16; __m256 v0 = _mm256_broadcast_ss(val + j);
        a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(r0), a0); a1 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(r0 + 8), a1);
      }
      a0 = _mm256_add_ps(_mm256_add_ps(a0, c0), _mm256_add_ps(d0, e0));
      a1 = _mm256_add_ps(_mm256_add_ps(a1, c1), _mm256_add_ps(d1, e1));
      float* o = out + (int64_t)b * N + p * 16;
      _mm256_storeu_ps(o, a0); _mm256_storeu_ps(o + 8, a1);
    }
  }
}
