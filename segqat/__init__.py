"""segqat: PaddleSeg-style QAT, PTQ, export and INT8 deployment."""
import warnings

# paddle 3.3.1 warns at import that ccache is missing (a compiler cache for
# building custom C++ ops, which segqat never does); every script printed it.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
