/* Listwise DPO: the Plackett-Luce likelihood of a ranking of K responses
 * (best first) under DPO's implicit rewards s_k = beta (log pi_k - log ref_k),
 * as in LiPO (Liu et al. 2024) and LPO4Rec; K = 2 is sigmoid DPO. */
#include <math.h>

#include "losses/losses.h"

void listwise_dpo_loss(double *losses, double *rewards, double *grad, const double *policy,
                       const double *ref, int B, int K, double beta, double *work) {
    double *suffix_lse = work; /* suffix_lse[k] = log sum_{j >= k} e^{s_j} */
    for (int b = 0; b < B; b++) {
        double *s = rewards + (long)b * K;
        for (int k = 0; k < K; k++) s[k] = beta * (policy[(long)b * K + k] - ref[(long)b * K + k]);
        suffix_lse[K - 1] = s[K - 1];
        for (int k = K - 2; k >= 0; k--) {
            double hi = s[k] > suffix_lse[k + 1] ? s[k] : suffix_lse[k + 1];
            double lo = s[k] > suffix_lse[k + 1] ? suffix_lse[k + 1] : s[k];
            suffix_lse[k] = hi + log1p(exp(lo - hi));
        }
        /* loss = -sum_{k < K-1} (s_k - suffix_lse[k]) */
        double loss = 0.0;
        for (int k = 0; k < K - 1; k++) loss -= s[k] - suffix_lse[k];
        losses[b] = loss;
        if (!grad) continue;
        /* d loss / d s_j = -[j < K-1] + sum_{k <= min(j, K-2)} e^{s_j - suffix_lse[k]} */
        for (int j = 0; j < K; j++) {
            double g = j < K - 1 ? -1.0 : 0.0;
            int last = j < K - 2 ? j : K - 2;
            for (int k = 0; k <= last; k++) g += exp(s[j] - suffix_lse[k]);
            grad[(long)b * K + j] = beta * g;
        }
    }
}
