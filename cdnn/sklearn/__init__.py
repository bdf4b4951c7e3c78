"""Drop-in replacements for scikit-learn's MLPClassifier and MLPRegressor, trained by cdnn.

    from cdnn.sklearn import MLPClassifier      # instead of sklearn.neural_network

Same constructor parameters, fitted attributes and methods as scikit-learn's, plus `dtype`.
For the same `random_state`, a float64 fit gives scikit-learn's model to rounding: the same
initial weights and intercepts (Glorot-uniform, drawn from the same RandomState in the same
order), the same early-stopping split, the same shuffles and mini-batches (the last one short),
the same updates and learning-rate schedules, and the same stopping rule. Training still runs in
cdnn's native steps (cdnn.Trainer, one native call per run of mini-batches); solver='lbfgs'
runs scipy's L-BFGS-B over the flat parameter buffer, as scikit-learn does over its packed one.

dtype: "float32" (the default) trains and predicts in float32, whatever the input's dtype:
float32 GEMMs run at about twice the float64 rate, and that is most of cdnn's lead over
scikit-learn on MNIST-sized problems. dtype=None follows the input as scikit-learn does
(float32 input in float32, anything else in float64); "float64" always computes in float64.

device: "cpu" (the default) or "cuda" (the current NVIDIA GPU; pip install 'cdnn[cuda12]' or
'cdnn[cuda13]'). On "cuda" the fit's rows go to the GPU once and train there; X and y are
numpy arrays (or CuPy arrays) and every answer (predict, predict_proba, score) is a numpy array.
The weights are drawn on the host, as scikit-learn draws them, and then copied to the GPU.
`coefs_` and `intercepts_` are numpy *copies* of the GPU's parameters, made at each access:
changing one of those arrays in place changes nothing; assign instead (`est.coefs_ = [...]` or
`est.coefs_[i] = W`), which copies to the GPU. solver='lbfgs' works there too: scipy runs on
the host, and each of its iterations copies the parameters to the GPU and the gradient back.
get_params, set_params, clone and pickle keep the device (an unpickled "cuda" model needs a GPU).

Where a fit still differs from scikit-learn's (beyond rounding):

- sample weights with alpha > 0: scikit-learn divides each batch's L2 term by that batch's
  weight sum; cdnn's penalty is fixed per run of batches, so it uses the mean weight × rows;
- the `loss_curve_` of a multi-output squared-error fit with alpha > 0: scikit-learn reports a
  per-batch penalty that cdnn does not see; it is taken at the epoch's start and end weights;
- scikit-learn clips probabilities to [eps, 1 − eps] in its reported log loss (not in the
  gradient); cdnn's loss is exact, so they differ once a probability is within eps of 0 or 1;
- a warm-started fit with early stopping keeps its best epoch's weights; scikit-learn 1.9
  trains its saved best weights in place there (`coefs_` and `_best_coefs` are the same arrays
  after the first fit), so it keeps the last epoch's when that fit never beats the first;
- sparse X (scipy.sparse) is taken as CSR, never densified.

This package is the only part of cdnn that imports scikit-learn (an optional dependency).
"""
try:   # the one optional dependency of this package: say how to get it
    import sklearn  # noqa: F401
except ImportError as e:
    raise ImportError("cdnn.sklearn needs scikit-learn: pip install 'cdnn[sklearn]'") from e

from cdnn.sklearn._estimators import MLPClassifier, MLPRegressor  # noqa: E402

__all__ = ["MLPClassifier", "MLPRegressor"]
