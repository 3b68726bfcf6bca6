/* Sequence-level alignment objectives and their gradients, in double.
 *
 * Each function takes per-example log-probabilities (sums over completion
 * tokens unless said otherwise) and writes per-example losses, implicit
 * rewards and, when the grad pointers are not NULL,
 *     grad_x[j] = d (sum_i losses[i]) / d x[j]
 * for each policy input x. For losses that couple examples (aot, sft) this
 * includes the cross terms; otherwise it is d losses[j] / d x[j]. The formulas
 * follow TRL 1.16, whose source is their specification; each is annotated
 * with the paper it implements. Arguments are checked by the binding. */
#ifndef CALIGN_LOSSES_H
#define CALIGN_LOSSES_H

typedef enum {
    DPO_SIGMOID, DPO_HINGE, DPO_IPO, DPO_EXO_PAIR, DPO_NCA_PAIR, DPO_ROBUST, DPO_BCO_PAIR,
    DPO_SPPO_HARD, DPO_AOT, DPO_AOT_UNPAIRED, DPO_APO_ZERO, DPO_APO_DOWN, DPO_DISCOPOP,
    DPO_SIGMOID_NORM, DPO_SFT, DPO_SCPO, DPO_N_LOSS_TYPES
} dpo_loss_type;

/* What a DPO loss type needs and does, next to its name (TRL's loss_type):
 * the one description calign.losses and the trainers read (_C.describe()). */
typedef struct {
    const char *name;
    int needs_chosen_lengths;   /* normalises by the chosen completion's token count */
    int needs_rejected_lengths; /* ... and by the rejected one's */
    int couples_batch;          /* a pair's loss depends on the other pairs of the batch */
} dpo_loss_info;
extern const dpo_loss_info DPO_LOSS_INFO[DPO_N_LOSS_TYPES];

typedef enum {
    F_REVERSE_KL, F_FORWARD_KL, F_JS_DIVERGENCE, F_ALPHA_DIVERGENCE, F_N_DIVERGENCES
} f_divergence;
extern const char *const F_DIVERGENCE_NAMES[F_N_DIVERGENCES];

typedef struct {
    double beta, label_smoothing, f_alpha_divergence_coef, discopop_tau, bco_reward_shift;
    double scpo_alpha; /* weight of ScPO's length-normalised chosen NLL term */
    f_divergence divergence;
    int n_loss_types;
    const int *loss_types;      /* dpo_loss_type values */
    const double *loss_weights; /* one per loss type */
} dpo_params;

/* chosen_lengths/rejected_lengths (completion token counts) are needed by
 * ipo, sigmoid_norm and sft (scpo: chosen_lengths only); weights (per-example factors) may be NULL.
 * work: 5 * B doubles and 2 * B ints of scratch. */
void dpo_loss(double *losses, double *chosen_rewards, double *rejected_rewards,
              double *grad_chosen, double *grad_rejected, const double *policy_chosen,
              const double *policy_rejected, const double *ref_chosen,
              const double *ref_rejected, const double *chosen_lengths,
              const double *rejected_lengths, const double *weights, int B,
              const dpo_params *p, double *work, int *iwork);

typedef enum { KTO_KTO, KTO_APO_ZERO_UNPAIRED, KTO_N_LOSS_TYPES } kto_loss_type;
extern const char *const KTO_LOSS_NAMES[KTO_N_LOSS_TYPES];

/* desirable[i] != 0 marks a desirable example; kl is the (already clamped,
 * constant) KL estimate z_0 of the KTO paper. */
void kto_loss(double *losses, double *rewards, double *grad, const double *policy,
              const double *ref, const unsigned char *desirable, int B, double kl, double beta,
              kto_loss_type type, double desirable_weight, double undesirable_weight);

/* Inputs are AVERAGE token log-probs. losses = -beta log sigma(log_odds). */
void orpo_loss(double *losses, double *chosen_rewards, double *rejected_rewards,
               double *log_odds, double *grad_chosen, double *grad_rejected,
               const double *policy_chosen, const double *policy_rejected, int B, double beta);

typedef enum { CPO_SIGMOID, CPO_HINGE, CPO_IPO, CPO_SIMPO, CPO_N_LOSS_TYPES } cpo_loss_type;
extern const char *const CPO_LOSS_NAMES[CPO_N_LOSS_TYPES];

void cpo_loss(double *losses, double *chosen_rewards, double *rejected_rewards,
              double *grad_chosen, double *grad_rejected, const double *policy_chosen,
              const double *policy_rejected, int B, double beta, cpo_loss_type type,
              double label_smoothing, double simpo_gamma, double alpha);

/* margin may be NULL; center_coef 0 disables the centring term. */
void reward_loss(double *losses, double *margins, double *grad_chosen, double *grad_rejected,
                 const double *chosen_rewards, const double *rejected_rewards,
                 const double *margin, int B, double center_coef);

/* [B, K] row-major, responses best first. work: K doubles. */
void listwise_dpo_loss(double *losses, double *rewards, double *grad, const double *policy,
                       const double *ref, int B, int K, double beta, double *work);

/* ==== Online RL: GRPO, RLOO, PPO ===================================================
 * Per-token arrays are float32 [B, T], row-major; masks hold 0 or 1 (1: a
 * completion token). Sums over tokens and the batch are accumulated in double.
 * TRL 1.16's GRPOTrainer and RLOOTrainer, and TRL's experimental PPOTrainer
 * (the PPO of Ziegler et al. 2019 / InstructGPT), are the specification. */

typedef enum { SCALE_GROUP, SCALE_BATCH, SCALE_NONE, N_SCALE_REWARDS } scale_rewards_kind;
extern const char *const SCALE_REWARDS_NAMES[N_SCALE_REWARDS];

typedef enum {
    AGG_SUM_THEN_NORMALIZE, AGG_NORMALIZE_THEN_SUM, N_REWARD_AGGREGATIONS
} reward_aggregation;
extern const char *const REWARD_AGGREGATION_NAMES[N_REWARD_AGGREGATIONS];

/* GRPO's group-relative advantages. rewards [B, F] (F reward functions; NaN:
 * no reward), weights [F]; B = n_groups * G, a group's G completions adjacent.
 * A completion every function left NaN, or whose advantage is undefined
 * (a group with fewer than two rewards when scaled), gets 0. work: 2 B doubles. */
void group_advantages(float *advantages, const float *rewards, const float *weights, int B,
                      int F, int G, scale_rewards_kind scale, reward_aggregation aggregation,
                      double *work);

/* RLOO's leave-one-out advantages (Ahmadian et al. 2024) as TRL 1.16's
 * RLOOTrainer: weighted rewards, optionally clamped to [clip_low, clip_high]
 * (clip != 0), minus beta * kl[i] (kl: per-sequence k1 KL, may be NULL),
 * baseline = mean of the group's other scorable rewards, optionally
 * normalised over the batch. work: B doubles. */
void rloo_advantages(float *advantages, const float *rewards, const float *weights,
                     const double *kl, int B, int F, int G, double beta, int clip,
                     double clip_low, double clip_high, int normalize, double *work);

/* out[i] = sum_t mask[i, t] (x[i, t] - y[i, t]), for i < B. */
void masked_row_difference_sums(double *out, const float *x, const float *y, const float *mask,
                                int B, int T);

typedef enum {
    GRPO_GRPO, GRPO_BNPO, GRPO_DR_GRPO, GRPO_DAPO, GRPO_CISPO, GRPO_SAPO, GRPO_LUSPO,
    GRPO_VESPO, GRPO_N_LOSS_TYPES
} grpo_loss_type;
extern const char *const GRPO_LOSS_NAMES[GRPO_N_LOSS_TYPES];

typedef enum { IS_TOKEN, IS_SEQUENCE, N_IMPORTANCE_SAMPLING_LEVELS } importance_sampling_level;
extern const char *const IMPORTANCE_SAMPLING_LEVEL_NAMES[N_IMPORTANCE_SAMPLING_LEVELS];

typedef struct {
    grpo_loss_type loss_type;
    importance_sampling_level level;
    double epsilon_low, epsilon_high;
    double delta;                     /* upper bound of the unclipped ratio; INFINITY: off */
    double beta;                      /* weight of the k3 KL to the reference; 0: none */
    int use_bias_correction_kl;       /* the KL term times the importance ratio */
    double sapo_temperature_pos, sapo_temperature_neg;
    double vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg;
    double off_policy_mask_threshold; /* NAN: off */
} grpo_params;

/* What one row adds to the loss and the metrics. For the clip flags: token
 * level, sum_t mask * flag_t; sequence level, the row's flag (0 or 1). */
typedef struct {
    double loss;   /* weight * sum_t mask_t * per_token_loss_t */
    double tokens; /* sum_t mask_t */
    double kl;     /* sum_t mask_t * kl_t (times the ratio when bias-corrected) */
    double clip_low, clip_high, clip_region, cispo_clipped;
    double phi;    /* VESPO's sequence weight */
} grpo_row_stats;

/* The factor each row's masked token sum is multiplied by, so that the rows'
 * sum is TRL's loss for the loss type: grpo/sapo 1/(B max(row_tokens, 1)),
 * bnpo 1/max(batch_tokens, 1), dr_grpo 1/(B max_completion_length), luspo 1/B
 * -- each also / gradient_accumulation_steps -- and dapo/cispo/vespo
 * 1/max(num_items_in_batch, 1). */
double grpo_row_weight(const grpo_params *p, double row_tokens, double batch_tokens, int B,
                       int max_completion_length, double num_items_in_batch,
                       int gradient_accumulation_steps);

/* One completion's part of the GRPO loss: the entry point for a fused
 * log-prob kernel that has one row's token log-probs at hand. old_logps NULL:
 * the current log-probs, detached (TRL's num_iterations == 1); ref_logps may
 * be NULL when beta == 0; entropy_mask (0/1, TRL's top_entropy_quantile
 * selection, multiplying the policy term only) may be NULL. Writes
 * grad_logps[t] = d loss / d logps[t] (the whole batch loss, this row's
 * tokens) and the row's stats; weight comes from grpo_row_weight. */
void grpo_loss_row(float *grad_logps, grpo_row_stats *stats, const float *logps,
                   const float *old_logps, const float *ref_logps, const float *mask,
                   const float *entropy_mask, double advantage, double weight, int T,
                   const grpo_params *p);

/* The metrics TRL's GRPOTrainer logs from its loss (NAN where TRL logs none). */
typedef struct {
    double loss, kl, clip_low_mean, clip_low_min, clip_high_mean, clip_high_max,
        clip_region_mean, cispo_clip_ratio, vespo_phi_seq_mean;
} grpo_metrics;

/* The metrics of a batch of B rows from their stats (batch_tokens: the
 * mask's sum); metrics->loss is the rows' summed loss. */
void grpo_aggregate(grpo_metrics *metrics, const grpo_row_stats *rows, int B, double batch_tokens,
                    const grpo_params *p);

/* The batch: grad_logps [B, T], metrics, per-row scratch rows [B].
 * num_items_in_batch <= 0 means the mask's sum. Returns CALIGN_OK, or
 * CALIGN_ENONFINITE when the loss or a gradient overflows. */
int grpo_loss(float *grad_logps, grpo_metrics *metrics, const float *logps,
              const float *old_logps, const float *ref_logps, const float *advantages,
              const float *mask, const float *entropy_mask, int B, int T, int max_completion_length,
              double num_items_in_batch, int gradient_accumulation_steps, const grpo_params *p,
              grpo_row_stats *rows);

typedef struct {
    double loss, clip_low_mean, clip_low_min, clip_high_mean, clip_high_max, clip_region_mean;
} rloo_metrics;

/* RLOO's clipped surrogate on sequence log-probs (TRL 1.16 RLOOTrainer):
 * ratio_i = exp(sum_t mask logps - old_logps[i]) (old_logps [B] sequence sums,
 * NULL: the current ones, detached), loss = mean_i -min(ratio A, clip(ratio) A).
 * Returns CALIGN_OK or CALIGN_ENONFINITE. */
int rloo_loss(float *grad_logps, rloo_metrics *metrics, const float *logps,
              const float *old_logps, const float *advantages, const float *mask, int B, int T,
              double epsilon_low, double epsilon_high);

typedef enum { KL_K1, KL_K3, N_KL_ESTIMATORS } kl_estimator;
extern const char *const KL_ESTIMATOR_NAMES[N_KL_ESTIMATORS];

/* PPO's per-token rewards: rewards[i, t] = -kl_coef * kl_t * mask_t, with
 * kl_t = logps - ref_logps (k1) or e^{ref - logps} - 1 - (ref - logps) (k3),
 * plus scores[i] at t = score_index[i]; kl_sums[i] = sum_t mask kl_t. */
void ppo_shape_rewards(float *rewards, double *kl_sums, const float *scores, const float *logps,
                       const float *ref_logps, const float *mask, const int *score_index, int B,
                       int T, double kl_coef, kl_estimator estimator);

/* (x - mean) / sqrt(var + 1e-8) over the n entries where mask is 1 (var with
 * Bessel's correction; + mean back when !shift_mean), 0 where it is 0.
 * CALIGN_EINVAL when fewer than two entries are masked in. */
int masked_whiten(float *out, const float *values, const float *mask, long n, int shift_mean);

/* Generalised advantage estimation (Schulman et al. 2016) over each row,
 * rewards and values taken as 0 where mask is 0: delta_t = r_t + gamma
 * V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; returns = A + V. */
void gae(float *advantages, float *returns, const float *rewards, const float *values,
         const float *mask, int B, int T, double gamma, double lam);

typedef struct {
    double loss, pg_loss, vf_loss, pg_clipfrac, vf_clipfrac, approxkl, ratio_mean;
} ppo_metrics;

/* PPO's clipped policy and value losses (TRL's PPOTrainer): pg over mask,
 * value over value_mask; grads of loss = pg_loss + vf_coef vf_loss.
 * Returns CALIGN_OK, CALIGN_EINVAL (a mask with no token) or CALIGN_ENONFINITE. */
int ppo_losses(float *grad_logps, float *grad_values, ppo_metrics *metrics, const float *logps,
               const float *old_logps, const float *values, const float *old_values,
               const float *advantages, const float *returns, const float *mask,
               const float *value_mask, int B, int T, double cliprange, double cliprange_value,
               double vf_coef);

/* Token-wise constrained fine-tuning (Qi et al. 2024, "Safety Alignment
 * Should Be Made More Than Just a Few Tokens Deep", Eq. 3-5) for one
 * sequence of T tokens: with delta_t = ref_logps[t] - logps[t],
 *     loss = sum_t mask_t (2 / beta_t) softplus(beta_t delta_t)      (Eq. 4)
 *     d loss / d logps[t] = -2 sigmoid(beta_t delta_t) mask_t         (Eq. 5)
 * (the NLL gradient weighted by 2 sigmoid(beta_t delta_t): 1 as beta -> 0,
 * about 2 below the reference and 0 above it for a large beta). Writes
 * grad[t] = scale * d loss / d logps[t] when grad is not NULL; mask may be
 * NULL (every token). Returns the sequence's loss. */
double token_constrained_row(float *grad, const float *logps, const float *ref_logps,
                             const float *betas, const float *mask, int T, double scale);

#endif
