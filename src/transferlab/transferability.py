"""Transferability scores of a pretrained backbone's features for a labelled set, without fine-tuning; higher is
better. LogME: You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
ICML 2021. LEEP: Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
Representations", ICML 2020."""

from __future__ import annotations

import math

import numpy as np


def logme_single(features: np.ndarray, target: np.ndarray, *, sigma2: np.ndarray | None = None,
                 u_t_y: np.ndarray | None = None, tol: float = 1e-5, max_iter: int = 100) -> tuple[float, float, float]:
    """LogME of one real-valued target: (evidence per sample, alpha, beta) at the fixed point.

    Model: y = F w + e, w ~ N(0, I/alpha), e ~ N(0, I/beta). Algorithm 1 of the paper: with the
    SVD F = U S V^T, iterate gamma = sum(beta s^2 / (alpha + beta s^2)), m = posterior mean,
    alpha = gamma / |m|^2, beta = (n - gamma) / |F m - y|^2, then evaluate the log evidence.
    """
    n, d = features.shape
    if sigma2 is None or u_t_y is None:
        u, s, _ = np.linalg.svd(features, full_matrices=False)
        sigma2 = s**2
        u_t_y = u.T @ target
    y_norm2 = float(target @ target)
    # the part of y outside the column space of F is never explained by F m
    residual_outside = max(y_norm2 - float(u_t_y @ u_t_y), 0.0)

    def posterior(alpha: float, beta: float) -> tuple[float, float, float]:
        """gamma, |m|^2 and |F m - y|^2 in the SVD basis: m's coordinates are beta s (u^T y) / (alpha + beta s^2),
        F m's are shrink * u^T y."""
        shrink = beta * sigma2 / (alpha + beta * sigma2)
        m_coords = beta * np.sqrt(sigma2) * u_t_y / (alpha + beta * sigma2)
        res2 = float(((shrink * u_t_y - u_t_y) ** 2).sum()) + residual_outside
        return float(shrink.sum()), float(m_coords @ m_coords), res2

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma, m2, res2 = posterior(alpha, beta)
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, 1e-12)
        converged = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    _, m2, res2 = posterior(alpha, beta)
    # log|alpha I + beta F^T F| over all d dimensions (directions without data contribute log alpha)
    log_det = float(np.log(alpha + beta * sigma2).sum()) + (d - len(sigma2)) * math.log(alpha)
    evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * res2 - alpha / 2 * m2 - log_det / 2)
    return evidence / n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of pooled `features` (n, D) for class `labels` (n,): the mean over classes of the
    per-sample log evidence of a one-vs-all (one-hot) target; for multi-label 0/1 rows (n, K), of each
    label's column (those with both values)."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if len(features) != len(labels) or len(features) < 2:
        raise ValueError("LogME needs at least 2 samples with one label each")
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    sigma2 = s**2
    scores = []
    columns = ([labels[:, k] for k in range(labels.shape[1]) if 0 < labels[:, k].sum() < len(labels)]
               if labels.ndim == 2 else [labels == cls for cls in np.unique(labels)])
    for column in columns:
        target = np.asarray(column, dtype=np.float64)
        scores.append(logme_single(features, target, sigma2=sigma2, u_t_y=u.T @ target)[0])
    return float(np.mean(scores))


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of the source model's class probabilities `source_probs` (n, Z) for target `labels` (n,): the mean
    log-likelihood of the labels under the expected empirical predictor (at most 0)."""
    probs = np.asarray(source_probs, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    classes, index = np.unique(labels, return_inverse=True)
    joint = np.zeros((len(classes), probs.shape[1]))
    np.add.at(joint, index, probs)
    joint /= n  # P(y, z)
    marginal = joint.sum(axis=0, keepdims=True)  # P(z)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected = (probs * conditional[index]).sum(axis=1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(np.maximum(expected, 1e-300))))
