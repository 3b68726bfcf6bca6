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

#endif
