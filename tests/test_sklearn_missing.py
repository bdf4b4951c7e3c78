"""cdnn.sklearn without scikit-learn installed: an ImportError that says what to install
(issue 17: it was a bare ModuleNotFoundError). Run in a subprocess where importing sklearn
fails, as it does where it is not installed."""
import subprocess
import sys

HIDE_SKLEARN = """
import sys
sys.modules["sklearn"] = None     # import sklearn now raises ImportError
try:
    from cdnn.sklearn import MLPClassifier
except ImportError as e:
    print(e)
else:
    print("imported")
import cdnn                        # the core does not need it
print(cdnn.MLP([2, 2]))
"""


def test_cdnn_sklearn_without_scikit_learn_says_what_to_install():
    result = subprocess.run([sys.executable, "-c", HIDE_SKLEARN], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "pip install 'cdnn[sklearn]'" in lines[0]
    assert lines[1].startswith("MLP(2-2")
