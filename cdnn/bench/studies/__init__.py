"""Studies: one-question benchmarks beside the suite, each a module run as a script,
`python -m cdnn.bench.studies.NAME [ARGS]` or `cdnn bench --study NAME [ARGS]` (a module's
docstring says what it measures and how to read it). They print; none fails on a timing."""

STUDIES = {
    "distributed": "MPI data-parallel training against one process and PyTorch DDP",
    "engine_ab": "an A/B of two builds of cdnn on the suite's shapes (PYTHONPATH at the other)",
    "onednn_gemm": "oneDNN's bf16 and float32 GEMMs against OpenBLAS, per shape",
    "one_row_threads": "one row: the short path against shared units",
    "sklearn_dropin": "cdnn.sklearn against scikit-learn's MLPClassifier on MNIST",
    "small_lbfgs_scipy_alone": "scipy's L-BFGS-B alone, at the default BLAS threads and one",
    "sparse": "sparse rows: cdnn, scikit-learn and torch.sparse_csr_tensor",
    "sparse_scale": "a 2^18-wide sparse input: peak memory and time",
    "spin_wait": "the pool's spin before a waiter sleeps, 0-50 µs",
}
