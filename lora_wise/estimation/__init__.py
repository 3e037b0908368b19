"""Dataset-size estimators (DSiRe and its rivals, the interval, applicability) and fitted reference banks."""
