"""`python -m tokenizers released KIND WEIGHTS [--config C] [--out X.ckpt]`: released weights (the published Phaedra,
AE_FSQ, LlamaGen VQ-16) -> a SciTok tokenizer checkpoint (tokenizers/released.py)."""

import sys

from tokenizers.released import main

if len(sys.argv) < 2 or sys.argv[1] != "released":
    sys.exit(__doc__)
main(sys.argv[2:])
