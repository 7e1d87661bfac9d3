"""Losses of point-supervised scene parsing: point CE (Eq. 2) and PDML (Eqs. 3-5)."""

from pdml_ray.losses.pdml import (PDMLTerms, mined_triplet_terms, pair_distances, pdml_terms,
                                  pdml_triplet_loss, safe_distance, triplet_distances,
                                  triplet_terms)
from pdml_ray.losses.point_ce import point_cross_entropy, split_cross_entropy
from pdml_ray.losses.point_sampling import sample_point_embeddings
from pdml_ray.losses.triplet_mining import PAIRINGS, mine_triplets, mine_triplets_between

__all__ = [
    "PAIRINGS", "PDMLTerms", "mine_triplets", "mine_triplets_between", "mined_triplet_terms",
    "pair_distances", "pdml_terms", "pdml_triplet_loss", "point_cross_entropy", "safe_distance",
    "sample_point_embeddings", "split_cross_entropy", "triplet_distances", "triplet_terms",
]
