"""The public embedders: a deep autoencoder, a beta-VAE and a beta-VSC.

Each class holds its docstring, its extra parameters and the torch module it
trains; everything else lives in :class:`skvae.base.BaseEmbedder`.
"""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state, check_scalar
from sklearn.utils._param_validation import Interval, StrOptions

from ._validation import warn as warn_at_user
from .base import BaseEmbedder
from .nn.models import Autoencoder, SparseCodingVAE, VariationalAutoencoder
from .train.data import RowData

# A latent dimension is active when its posterior mean varies across cells with at least this
# variance: a hundredth of the prior's (Burda, Grosse and Salakhutdinov, 2016).
ACTIVITY_THRESHOLD = 0.01
# Rows of the training data, evenly spaced, on which activity is measured after fit
_ACTIVITY_ROWS = 10_000


def _fewest_active(n_components):
    """Active dimensions below which fit warns of a collapse: half of them, and at least one."""
    return max(1, n_components // 2)


class PosteriorCollapseWarning(UserWarning):
    """A variational model's codes carry (almost) nothing: few latent dimensions are active.

    ``fit`` issues it; turn it into an error with
    ``warnings.simplefilter("error", PosteriorCollapseWarning)``.

    Examples
    --------
    >>> from skvae import PosteriorCollapseWarning
    >>> issubclass(PosteriorCollapseWarning, UserWarning)
    True
    """

_SHARED_PARAMETERS = """\
    n_components : int, default=6
        Size of the latent code.

    hidden_layer_sizes : array-like of int, default=(128, 32, 16)
        Widths of the encoder's hidden layers, input side first; the decoder uses
        them in reverse. The encoder's first layer is linear with no activation
        (unless ``input_activation``), every other hidden layer is followed by a
        ReLU; the decoder ends linear.

    input_activation : bool, default=False
        Treat the encoder's first layer as every other hidden layer: batch
        normalisation (with ``batch_norm``), a ReLU and dropout (with
        ``dropout``) after it. With ``hidden_layer_sizes=(128,)`` the encoder is
        then scVI's: genes -> 128 -> normalisation -> ReLU -> dropout -> the
        code's heads. The default keeps the original study's network, whose
        first layer is linear: with a single hidden layer, its encoder is a
        linear map of the genes.
    likelihood : {"gaussian", "poisson", "nb", "zinb"}, default="gaussian"
        The reconstruction term. "gaussian": the summed squared error of the
        input itself, for log-normalised and scaled expression (the original
        study). The count likelihoods take raw UMI counts of QC'd cells (dense or
        sparse, non-negative; non-integer values warn): the encoder sees
        ``log1p(x / l * 1e4)``, computed per minibatch, with ``l`` the cell's
        total count; the decoder gives per-gene proportions whose product with
        ``l`` is the mean of a Poisson ("poisson"), a negative binomial with a
        learned per-gene dispersion ("nb", as scVI), or a zero-inflated negative
        binomial with decoded dropout logits ("zinb", as scVI and DCA). For count
        likelihoods :meth:`inverse_transform` returns normalised expression
        (proportions times 1e4).

    batch_norm : bool, default=False
        Batch normalisation between each hidden linear layer and its ReLU (the
        encoder's input layer only with ``input_activation``), as in scVI. Helps
        count models train.

    dropout : float, default=0.0
        Share of the hidden units' outputs dropped in training (scVI: 0.1).

    encode_batch : bool, default=False
        With batches (``fit(X, batch=...)``), feed each cell's batch to the
        encoder as well as to the decoder. By default only the decoder takes it
        (in every hidden layer, as scVI): the code then describes the cell without
        its batch, :meth:`transform` needs no batch, and cells of batches never
        seen in ``fit`` embed onto the fitted model as they are (query mapping).
        With ``encode_batch=True``, :meth:`transform` needs each cell's batch,
        from those seen in ``fit``.

    continuous_covariates : str or list of str, default=None
        Columns of ``batch=`` (a DataFrame or dict, e.g. ``adata.obs[["sample",
        "percent_mito"]]``) that hold a number per cell, such as percent
        mitochondrial counts or cell-cycle scores (scVI's
        ``continuous_covariate_keys``); the other columns are categories. Each
        hidden layer of the decoder (and the encoder's input layer, with
        ``encode_batch=True``) adds a learned linear function of them, so the
        code need not carry them; the model standardises them by the cells it
        is trained on. Values must be finite numbers, not constant in ``fit``;
        every method that takes ``batch=`` then needs these columns (decode at
        a chosen value with ``inverse_transform(codes, batch={..., "percent_mito":
        0.0})``). None: every column of ``batch=`` is categorical.

    dispersion : {"gene", "gene-batch"}, default="gene"
        The negative binomial's dispersion ("nb" and "zinb"): one per gene, or,
        with batches, one per gene and batch (of the first column, with several;
        scVI's options of the same names),
        for batches whose technologies differ in noise as well as in mean.
        Without batches it is one per gene either way; the other likelihoods
        have no dispersion and ignore it. On sparse input "gene-batch" trains
        about twice as slowly (the fused sparse likelihood takes one dispersion
        per gene).

    batch_adversary : float, default=0.0
        With two or more batches, the strength of an adversarial batch
        classifier: a small network learns to tell each cell's batch from its
        code, and the encoder learns to defeat it (a reversed gradient, as in
        domain-adversarial training), which mixes the batches in the code beyond
        what conditioning the decoder does. Only cells whose neighbourhood is
        already shared with other batches are pushed (their 5 nearest codes in
        the minibatch hold other batches), so a cell type of one batch alone is
        left where it is; and a cell's batch is asked only among the batches of
        those neighbours, so with three batches or more a population that some
        of them lack is mixed among those that hold it, not pushed towards the
        others' cells. The reversed gradient is this weight times the size of
        the reconstruction's gradient at the code, so the same value means the
        same strength whatever the depth and number of genes (the recommendation
        uses 0.3). With several batch columns it tells the first (put the
        finest first, e.g. the sample before its technology). 0 (the default)
        leaves it out; the user guide's "Integrating batches" section measures it.

    batch_model : {"layers", "genes"}, default="layers"
        How the batches enter the model (with batches and a count likelihood
        for "genes"). "layers": the decoder takes the batch in every hidden
        layer, as scVI's does, so it can learn any batch effect, including one
        that differs between cell types; it can also learn to draw one cell
        type of one batch from the code of another type of another batch, and
        with ``batch_adversary`` a population that only some batches hold may
        be folded into a shared one. "genes": each batch multiplies each gene's
        expected counts by a factor the model learns (one log factor per gene
        and batch, 0 at first), the encoder reads the counts divided by the
        cell's batch's factors, and the decoder's hidden layers never see the
        batch: a technology's per-gene effect is removed before encoding, and
        what a batch alone holds keeps its own codes. :meth:`transform` then
        needs each cell's batch. It cannot remove an effect that differs
        between cell types of one batch (add ``batch_adversary`` for the
        rest). The user guide's "Integrating batches" section measures both.

    batch_counterparts : float or None, default=None
        With ``batch_adversary``, keep it off the populations that no other
        batch holds, found without labels. Before training, each batch's cells
        are clustered three times from different random starts (about 150 cells
        a cluster, KMeans on 20 principal components of the genes'
        log-normalised values) and each cluster's counts pooled; between two
        batches a per-gene factor is estimated (the median log-ratio over
        mutually nearest clusters) and removed, and two clusters are
        counterparts where their pooled profiles then differ by at most this
        root mean square log-fold change beyond counting noise (0.4: a typical
        gene 1.5-fold apart). The adversary asks a cell's batch only among the
        batches that hold a counterpart of one of its three clusters (one
        clustering may cut two populations together, a profile nothing matches),
        so cells with none are not pushed towards the others' cells. It may take
        a population of one batch for a close relative that another batch alone
        holds (CD8 and CD4 T cells can lie 0.2-0.3 apart, depending on the
        genes), and it leaves unmixed a shared population whose expression
        differs between the batches by more than a factor per gene. Needs a
        count likelihood; ``fit`` only (not ``partial_fit`` or torchrun);
        ignored without ``batch_adversary`` or batches. The distances are
        recorded in ``counterpart_distances_``. None (the default): every cell's
        neighbourhood decides, as described under ``batch_adversary``. The user
        guide's "Integrating batches" section measures it."""

_TRAINING_PARAMETERS = """\
    batch_size : int, default=256
        Cells per minibatch; in a data-parallel run (``torchrun``, see the
        "Scaling up" guide), per minibatch of all processes together.

    shuffle_block_size : int or "auto", default="auto"
        Rows shuffled together. Each epoch visits the rows in a random order of
        blocks of this many consecutive rows (the last block may be shorter),
        and minibatches take whole blocks in turn. 1 shuffles single cells. A
        larger block reads a file on disk in a few long runs instead of one per
        cell (HDF5 reads values in chunks of thousands, so a single row costs a
        whole chunk), at the price of minibatches of neighbouring rows: when a
        file is sorted, e.g. by sample, each minibatch draws from fewer places.
        "auto": 1 for data in memory, 16 for a file on disk. The size used is
        ``shuffle_block_size_``.

    learning_rate : float, default=1e-3
        Adam's step size.

    max_epochs : int or "auto", default=200
        Passes over the training data (fewer with early stopping). "auto"
        follows the data size: 200 up to 20,000 training cells, then as many
        gradient steps as 20,000 cells x 200 epochs (40 epochs at 100,000
        cells, 4 at a million; at least 2), as scVI's default shrinks its
        epochs. The number used is ``max_epochs_``.

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the cells and stop when their loss has
        not improved by ``tol`` for ``n_iter_no_change`` epochs; the weights of the
        best epoch are kept.

    validation_fraction : float, default=0.1
        Share of cells held out for early stopping.

    n_iter_no_change : int, default=10
        Epochs without improvement before early stopping.

    tol : float, default=1e-4
        Least improvement of the validation loss (per cell) that counts.

    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, the validation split and the
        reparameterisation noise. An int gives identical results on CPU. Global
        random states (numpy's and torch's) are left untouched.

    algorithm : {"auto", "sparse", "dense"}, default="auto"
        How minibatches are computed; the model and its loss are the same.
        "sparse" writes each cell as a sparse vector plus a per-gene shift (0 for
        sparse input; for dense input the gene's median, which is its background
        value, e.g. ``-mean / sd`` of scaled data) and computes the first layer and
        the squared error from it: exact, with several times less arithmetic on
        single-cell data. "dense" uses plain dense products. "auto" takes "sparse"
        for sparse input and for dense input with at most 30 % of its entries off
        their gene's median.

    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
        Where to train: "auto" takes CUDA when available (in a process started
        by ``torchrun``, the GPU ``LOCAL_RANK``). The fitted module is moved to
        CPU; transform runs there.
    n_jobs : int, default=None
        Threads for training and inference: torch's and those of the BLAS and
        OpenMP libraries, limited during each call and restored after it. As in
        scikit-learn, None means 1 unless in a ``joblib.parallel_config(n_jobs=...)``
        context, -1 means every CPU. One thread degrades gracefully on a busy
        machine: threads beyond the idle cores wait on each other and can slow an
        epoch down 10-100x. On a quiet machine more threads help most for wide
        inputs (all genes rather than 2,000).
    verbose : int, default=0
        Show training progress when > 0: a progress bar (epochs, time left,
        the current loss) where tqdm is installed and the output is a terminal
        or a notebook, else one line per epoch (losses, time, time left) on
        standard output. Whatever ``verbose``, each epoch's line goes to the
        ``"skvae"`` logger at INFO level (``logging.basicConfig(level="INFO")``
        shows them); nothing is printed by default."""

_WARMUP_PARAMETER = """\
    kl_warmup_epochs : int or "auto", default=0
        Epochs over which the KL weight rises linearly from 0 to ``beta``
        (0 in the first epoch, ``beta`` from epoch ``kl_warmup_epochs + 1``). The
        code first learns to reconstruct, then is pulled towards the prior, which
        keeps count models from collapsing. Early stopping waits for the warm-up,
        and the validation loss always weighs the KL term by ``beta``. "auto":
        half of ``max_epochs_``, so the warm-up shrinks with an "auto" budget; the
        number used is ``kl_warmup_epochs_``."""

_ACTIVITY_ATTRIBUTES = """\
    active_components_ : ndarray of bool of shape (n_components,)
        Which latent dimensions are active: their posterior mean varies across
        the training cells (up to 10,000, evenly spaced) with variance above 0.01,
        a hundredth of the prior's (Burda et al., 2016). ``fit`` warns with a
        :class:`PosteriorCollapseWarning` when fewer than half are active.

    n_active_components_ : int
        Number of active latent dimensions.

    kl_warmup_epochs_ : int
        The warm-up ``kl_warmup_epochs`` resolved to (itself when a number)."""

_FITTED_ATTRIBUTES = """\
    module_ : torch.nn.Module
        The trained network, on CPU.

    history_ : dict of list of float
        Per-epoch mean training ``loss`` per cell, its ``reconstruction`` and
        ``kl`` parts and the epoch's ``kl_weight``; ``val_loss`` too with early
        stopping.

    n_iter_ : int
        Number of epochs run.

    max_epochs_ : int
        The epochs ``max_epochs`` resolved to (itself when a number).

    shuffle_block_size_ : int
        The block ``shuffle_block_size`` resolved to at the last fit.
    algorithm_ : {"sparse", "dense"}
        The minibatch representation ``algorithm`` resolved to at ``fit``;
        :meth:`score` uses it too.

    n_features_in_ : int
        Number of features seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``. Defined only when `X`
        has feature names that are all strings.

    batch_categories_ : ndarray of shape (n_batches,), dict of str to ndarray, or None
        The batches seen in ``fit`` (``batch=``), sorted, then those added by
        ``map_query``; for several columns a dict of each column's; None when
        fitted without batches. The decoder is conditioned on them.

    n_reference_categories_ : ndarray of int
        Only after ``map_query``: how many of each column's categories are the
        reference's (those of ``fit``); the encoder then reads batches, with
        offsets of 0 for the reference's.

    counterpart_distances_ : ndarray of shape (n_groups, n_batches)
        Only where ``batch_counterparts`` gated the adversary: for each group of
        cells (those that share their cluster in each of the three clusterings)
        the least distance (root mean square log-fold change beyond noise) of
        its clusters to the nearest cluster of each batch of the first column,
        0 for its own batch, NaN where none was compared (clusters of fewer than
        20 cells, which every batch counts as holding). A group whose every
        other entry exceeds ``batch_counterparts`` was left alone by the
        adversary.

    counterpart_batches_ : ndarray of int of shape (n_groups,)
        Only with ``counterpart_distances_``: each group's batch, an index
        into the first column's categories.

    covariates_ : skvae._covariates.Covariates or None
        The covariates of ``batch=`` as objects: each column's name and
        categories, which encode labels into the codes the model reads."""


def _docstring(template):
    """Fill the shared parameter and attribute sections into a class docstring."""

    def decorate(cls):
        cls.__doc__ = template.format(
            shared=_SHARED_PARAMETERS,
            training=_TRAINING_PARAMETERS,
            fitted=_FITTED_ATTRIBUTES,
            warmup=_WARMUP_PARAMETER,
            activity=_ACTIVITY_ATTRIBUTES,
        )
        return cls

    return decorate


@_docstring(
    """Deep autoencoder embedding: a deterministic code.

    The encoder maps each cell to ``n_components`` numbers through
    ``hidden_layer_sizes``; the decoder maps them back; the loss per cell is the
    reconstruction term of ``likelihood`` (by default the summed squared error).

    Parameters
    ----------
{shared}

{training}

    Attributes
    ----------
{fitted}

    See Also
    --------
    BetaVAEEmbedder : Variational autoencoder with a Gaussian posterior.
    BetaVSCEmbedder : Variational sparse coding with a spike-and-slab posterior.
    sklearn.decomposition.PCA : The linear embedding these replace.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import AutoencoderEmbedder
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(100, 2)) @ rng.normal(size=(2, 20)) * 3 + rng.normal(size=(100, 20))  # 2 directions
    >>> embedder = AutoencoderEmbedder(n_components=2, max_epochs=5, random_state=0)
    >>> embedder.fit_transform(X).shape
    (100, 2)
    """
)
class AutoencoderEmbedder(BaseEmbedder):
    def _build_module(self, n_features, hidden_layer_sizes, **options):
        return Autoencoder(n_features, self.n_components, hidden_layer_sizes, **options)


class _VariationalEmbedder(BaseEmbedder):
    """Shared by the models with a prior: the KL weight ``beta`` and sampling."""

    _parameter_constraints = {
        **BaseEmbedder._parameter_constraints,
        "beta": [Interval(Real, 0, None, closed="left")],
        "kl_warmup_epochs": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
    }
    _saved_attributes = (*BaseEmbedder._saved_attributes, "active_components_", "kl_warmup_epochs_")

    def _kl_weight(self):
        return self.beta

    def _kl_warmup_epochs(self):
        return self.kl_warmup_epochs_

    def _resolve_budget(self, n_cells, *, keep):
        super()._resolve_budget(n_cells, keep=keep)
        # "auto": the first half of the resolved epochs
        if not (keep and self.kl_warmup_epochs == "auto" and hasattr(self, "kl_warmup_epochs_")):
            self.kl_warmup_epochs_ = self.max_epochs_ // 2 if self.kl_warmup_epochs == "auto" else self.kl_warmup_epochs

    def _check_active_components(self, data, warn=True):
        # Burda et al.'s activity: the variance across cells of a dimension's posterior mean
        activity = self._map_rows("embed", data.sample(_ACTIVITY_ROWS)).var(axis=0)
        self.active_components_ = activity > ACTIVITY_THRESHOLD
        if warn and self.n_active_components_ < _fewest_active(self.n_components):
            warn_at_user(
                f"Posterior collapse: {self.n_active_components_} of the {self.n_components} latent dimensions are active (their "
                f"posterior mean varies across cells with variance above {ACTIVITY_THRESHOLD}; the largest is "
                f"{activity.max():.2g}), so the codes carry little of the data. The KL term, weighted by "
                f"beta={self.beta}, won over the reconstruction in {self.n_iter_} epochs: lower beta, train for "
                f"more epochs, or warm the KL weight up from 0 over more of them (kl_warmup_epochs='auto' warms "
                f"up over the first half; this fit's warm-up was {self.kl_warmup_epochs_} epochs).",
                PosteriorCollapseWarning,
            )

    @property
    def n_active_components_(self):
        """Number of active latent dimensions (see ``active_components_``)."""
        return int(self.active_components_.sum())

    def sample(self, n_samples=1, *, batch=None, random_state=None):
        """Generate expression profiles by decoding codes drawn from the prior.

        Parameters
        ----------
        n_samples : int, default=1
            Number of profiles.
        batch : label, array-like of shape (n_samples,), DataFrame or dict, default=None
            For a model fitted with batches (required there): the batch to decode
            the profiles as measured in, one label for all or one per profile (for
            several columns, a dict of one label per column).
        random_state : int, RandomState instance or None, default=None
            Seeds the draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features), dtype float32
            Decoded means of the drawn codes.
        """
        self._check_fitted("sample")
        check_scalar(n_samples, "n_samples", Integral, min_val=1)
        # None draws fresh entropy rather than from numpy's global RandomState, which stays untouched
        rng = np.random.RandomState() if random_state is None else check_random_state(random_state)
        generator = torch.Generator().manual_seed(rng.randint(np.iinfo(np.int32).max))
        with torch.no_grad():
            codes = RowData.from_input(self.module_.sample_prior(n_samples, generator).numpy())
        return self._map_rows("decode", self._input(codes, batch, one_for_all=True))


@_docstring(
    """Beta-VAE embedding: Gaussian posterior, codes are the posterior means.

    The loss per cell is the reconstruction term of ``likelihood`` (by default
    the summed squared error) of a reparameterised draw plus ``beta`` times the
    KL divergence of the posterior ``N(mu, sigma^2)`` from ``N(0, I)``.
    :meth:`transform` returns ``mu``.

    Parameters
    ----------
{shared}

    beta : float, default=1.0
        Weight of the KL term: larger values give smoother, more disentangled
        and less detailed codes; 0 gives a noisy autoencoder.

{warmup}

{training}

    Attributes
    ----------
{fitted}

{activity}

    See Also
    --------
    AutoencoderEmbedder : Deterministic autoencoder.
    BetaVSCEmbedder : Sparse codes from a spike-and-slab posterior.

    References
    ----------
    I. Higgins et al. "beta-VAE: Learning Basic Visual Concepts with a
    Constrained Variational Framework". ICLR 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import BetaVAEEmbedder
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(100, 2)) @ rng.normal(size=(2, 20)) * 3 + rng.normal(size=(100, 20))  # 2 directions
    >>> embedder = BetaVAEEmbedder(n_components=2, beta=2.0, max_epochs=5, random_state=0)
    >>> embedder.fit_transform(X).shape
    (100, 2)
    >>> embedder.sample(3, random_state=0).shape
    (3, 20)
    """
)
class BetaVAEEmbedder(_VariationalEmbedder):
    def __init__(
        self,
        n_components=6,
        *,
        hidden_layer_sizes=(128, 32, 16),
        input_activation=False,
        likelihood="gaussian",
        batch_norm=False,
        dropout=0.0,
        encode_batch=False,
        continuous_covariates=None,
        dispersion="gene",
        batch_adversary=0.0,
        batch_model="layers",
        batch_counterparts=None,
        beta=1.0,
        kl_warmup_epochs=0,
        batch_size=256,
        shuffle_block_size="auto",
        learning_rate=1e-3,
        max_epochs=200,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        random_state=None,
        algorithm="auto",
        device="auto",
        n_jobs=None,
        verbose=0,
    ):
        super().__init__(
            n_components,
            hidden_layer_sizes=hidden_layer_sizes,
            input_activation=input_activation,
            likelihood=likelihood,
            batch_norm=batch_norm,
            dropout=dropout,
            encode_batch=encode_batch,
            continuous_covariates=continuous_covariates,
            dispersion=dispersion,
            batch_adversary=batch_adversary,
            batch_model=batch_model,
            batch_counterparts=batch_counterparts,
            batch_size=batch_size,
            shuffle_block_size=shuffle_block_size,
            learning_rate=learning_rate,
            max_epochs=max_epochs,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            random_state=random_state,
            algorithm=algorithm,
            device=device,
            n_jobs=n_jobs,
            verbose=verbose,
        )
        self.beta = beta
        self.kl_warmup_epochs = kl_warmup_epochs

    def _build_module(self, n_features, hidden_layer_sizes, **options):
        return VariationalAutoencoder(n_features, self.n_components, hidden_layer_sizes, **options)


@_docstring(
    """Beta-VSC embedding: variational sparse coding with a spike-and-slab posterior.

    Each latent dimension of a cell is active with probability ``gamma`` (the
    spike) and then drawn from the slab ``N(mu, sigma^2)``, else exactly 0. The
    loss per cell is the reconstruction term of ``likelihood`` (by default the
    summed squared error) plus ``beta`` times the spike-and-slab KL divergence
    from the prior (active with probability ``prior_activity``, slab ``N(0, 1)``). Training relaxes the binary selection
    with a sigmoid of sharpness ``spike_sharpness``. :meth:`transform` returns the
    expected sparse code ``gamma * mu``; :meth:`spike_probabilities` returns
    ``gamma``, which says which dimensions each cell uses.

    Parameters
    ----------
{shared}

    beta : float, default=1.0
        Weight of the KL term.

    prior_activity : float, default=0.5
        Prior probability ``alpha`` that a latent dimension is active, in (0, 1);
        smaller values ask for sparser codes.

    spike_sharpness : float, default=50.0
        Sharpness ``c`` of the sigmoid selection in the reparameterisation.

{warmup}

{training}

    Attributes
    ----------
{fitted}

{activity}

    See Also
    --------
    BetaVAEEmbedder : Dense Gaussian codes.

    References
    ----------
    F. Tonolini, B. S. Jensen, R. Murray-Smith. "Variational Sparse Coding".
    UAI 2020, PMLR 115:690-700.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import BetaVSCEmbedder
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(100, 2)) @ rng.normal(size=(2, 20)) * 3 + rng.normal(size=(100, 20))  # 2 directions
    >>> embedder = BetaVSCEmbedder(n_components=4, beta=2.0, max_epochs=20, random_state=0)
    >>> embedder.fit_transform(X).shape
    (100, 4)
    >>> gamma = embedder.spike_probabilities(X)
    >>> bool(((gamma > 0) & (gamma < 1)).all())
    True
    """
)
class BetaVSCEmbedder(_VariationalEmbedder):
    _parameter_constraints = {
        **_VariationalEmbedder._parameter_constraints,
        "prior_activity": [Interval(Real, 0, 1, closed="neither")],
        "spike_sharpness": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        n_components=6,
        *,
        hidden_layer_sizes=(128, 32, 16),
        input_activation=False,
        likelihood="gaussian",
        batch_norm=False,
        dropout=0.0,
        encode_batch=False,
        continuous_covariates=None,
        dispersion="gene",
        batch_adversary=0.0,
        batch_model="layers",
        batch_counterparts=None,
        beta=1.0,
        prior_activity=0.5,
        spike_sharpness=50.0,
        kl_warmup_epochs=0,
        batch_size=256,
        shuffle_block_size="auto",
        learning_rate=1e-3,
        max_epochs=200,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        random_state=None,
        algorithm="auto",
        device="auto",
        n_jobs=None,
        verbose=0,
    ):
        super().__init__(
            n_components,
            hidden_layer_sizes=hidden_layer_sizes,
            input_activation=input_activation,
            likelihood=likelihood,
            batch_norm=batch_norm,
            dropout=dropout,
            encode_batch=encode_batch,
            continuous_covariates=continuous_covariates,
            dispersion=dispersion,
            batch_adversary=batch_adversary,
            batch_model=batch_model,
            batch_counterparts=batch_counterparts,
            batch_size=batch_size,
            shuffle_block_size=shuffle_block_size,
            learning_rate=learning_rate,
            max_epochs=max_epochs,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            random_state=random_state,
            algorithm=algorithm,
            device=device,
            n_jobs=n_jobs,
            verbose=verbose,
        )
        self.beta = beta
        self.kl_warmup_epochs = kl_warmup_epochs
        self.prior_activity = prior_activity
        self.spike_sharpness = spike_sharpness

    def _architecture(self):
        return {**super()._architecture(), "prior_activity": self.prior_activity,
                "spike_sharpness": self.spike_sharpness}

    def _build_module(self, n_features, hidden_layer_sizes, **options):
        return SparseCodingVAE(
            n_features,
            self.n_components,
            hidden_layer_sizes,
            prior_activity=self.prior_activity,
            spike_sharpness=self.spike_sharpness,
            **options,
        )

    def spike_probabilities(self, X, *, batch=None):
        """Posterior probability that each latent dimension is active, per cell.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Data with the features seen in ``fit``.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch, read only when the encoder takes it, as in :meth:`transform`.

        Returns
        -------
        gamma : ndarray of shape (n_samples, n_components)
            Values in (0, 1).
        """
        return self._map_rows("spike_probability", self._fitted_data(X, batch))
