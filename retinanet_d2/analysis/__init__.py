"""The paper's analyses (Fig. 1, 4, 5 and training curves) as library code behind tools/."""
