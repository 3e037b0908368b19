"""Dataset-size estimators and pretrained reference banks.

``fitted`` holds the arithmetic and the fitted states in numpy only (what a scan runs);
``estimators`` the scikit-learn estimators over them (DSiRe, the paper's rivals, the interval,
applicability: what fitting and evaluation use); ``bank`` the banks that store those states;
``methods`` the methods' names.
"""
