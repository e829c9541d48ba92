"""The loader benchmark: each input pipeline alone, no model, against this machine's decode limit.

python src/benchmark.py
python src/benchmark.py --num-images 500 --entries tfdata sequence --passes 3
"""

from loaderlab.benchmark import main

if __name__ == "__main__":
    main()
