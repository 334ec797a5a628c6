"""The numeric core: pure numpy, float64, no I/O and no boto3.

Both the single-process reference trainer and the distributed trainer are built from the
same pieces here, so that they compute the same numbers.
"""
