"""The estimation methods by the names the CLI, the results tables and a bank's self-check use.

One owner for the names: the classes live in ``estimators`` (which imports scikit-learn), the
names here, so that a scan can read a bank's self-check without importing any estimator.
"""

FROBENIUS_NN = "frobenius-nn"  # the paper's baseline
DSIRE = "dsire"
NN_FULL_MODEL = "nn-full-model"
RIDGE = "ridge"
GDA = "gda"
AVERAGE_VOTE = "average-vote"
INTERVAL = "interval"  # SizeInterval's continuous estimate

#: Paper Table 5 plus ours, in the order of the results tables.
ALL_METHODS = (FROBENIUS_NN, DSIRE, NN_FULL_MODEL, RIDGE, GDA, AVERAGE_VOTE, INTERVAL)
#: What ``lora-wise fit-bank`` measures on a bank's own table, and ``lora-scan`` quotes.
SELF_CHECK_METHODS = (FROBENIUS_NN, DSIRE, INTERVAL)
