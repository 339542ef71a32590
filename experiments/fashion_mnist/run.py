"""The Fashion-MNIST reproduction: the MNIST one (the authors' 4-bit QLeNet and
the float LeNet, each in its own sub-folder, then one report of both) on the
full Fashion-MNIST (60,000 training and 10,000 test images; offline from
Debian's ``dataset-fashion-mnist``)."""

from experiments.mnist.run import MODELS_REPORT_FILES, REPORT_FILES, run

__all__ = ["MODELS_REPORT_FILES", "REPORT_FILES", "run"]
