"""Zero-shot classification, image-text retrieval, and callbacks that run them during `fit`.

The metric functions take embeddings (NumPy or backend arrays) and return
plain floats, so they are the same on every backend. Ties are counted against
the model: a wrong class (or caption, or image) that scores exactly as high as
the right one ranks above it, so a collapsed model whose embeddings are all
equal scores 0, never a lucky index order.
"""

import keras
import numpy as np

from keras_siglip.models.siglip.naflex_image_encoder import INPUT_KEYS as NAFLEX_KEYS
from keras_siglip.models.siglip.tower_model import TowerModel
from keras_siglip.templates import DEFAULT_TEMPLATES


def _to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), "float32")


def _check_ks(ks):
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints; got {ks!r}.")
    return ks


# The encoders of the models evaluated last (their compiled functions are reused
# call after call); a few models at most are kept alive by this cache.
_cached = []
_CACHE_SIZE = 4


def _encoder(model, kind):
    for cached_model, encoders in _cached:
        if cached_model is model:
            return encoders[kind]
    # Encoding through a TowerModel's `predict` runs a compiled forward pass on
    # every backend (one `jit` per input shape on JAX, not one per op), and reads
    # the SigLIP's current weights, not those of the first trace.
    encoders = {"images": TowerModel(model, "image"), "texts": TowerModel(model, "text")}
    _cached.insert(0, (model, encoders))
    del _cached[_CACHE_SIZE:]
    return encoders[kind]


def _predict_padded(encoder, inputs, batch_size):
    """`encoder.predict` on inputs (an array or a dict of them) padded to whole batches: one compiled shape."""
    count = count_images(inputs)
    padding = -count % batch_size
    if padding:
        inputs = keras.tree.map_structure(lambda x: np.concatenate([x, np.repeat(x[-1:], padding, axis=0)]), inputs)
    return _to_numpy(encoder.predict(inputs, batch_size=batch_size, verbose=0))[:count]


def image_inputs(batch):
    """A batch dict's images: its `"images"` array, or a SigLIP 2 NaFlex model's three patch inputs as a dict.

    Example:
    >>> image_inputs({"images": np.zeros((2, 8, 8, 3)), "token_ids": np.zeros((2, 4))}).shape
    (2, 8, 8, 3)
    """
    if "images" in batch:
        return batch["images"]
    if all(key in batch for key in NAFLEX_KEYS):
        return {key: batch[key] for key in NAFLEX_KEYS}
    raise ValueError(f"A batch needs 'images' (or NaFlex's {', '.join(NAFLEX_KEYS)}); it has {sorted(batch)}.")


def count_images(images):
    """How many images an array (or a dict of NaFlex arrays) holds."""
    return len(next(iter(images.values()))) if isinstance(images, dict) else len(images)


def first_images(images, count):
    """The first `count` images of an array or a dict of NaFlex arrays."""
    return {k: v[:count] for k, v in images.items()} if isinstance(images, dict) else images[:count]


def _is_dataset(x):
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "as_numpy_iterator")


def collect_batches(dataset, keys=None):
    """A `tf.data.Dataset` (or any iterable) of dict or tuple batches as one dict / tuple of NumPy arrays.

    What the readers give (`{"images", "token_ids"}` batches) becomes
    `{"images": (N, S, S, 3), "token_ids": (N, L)}`; a dataset of
    `(images, labels)` tuples becomes `(images, labels)`.

    Example:
    >>> collect_batches([{"x": np.zeros((2, 1))}, {"x": np.ones((1, 1))}])["x"].shape
    (3, 1)
    """
    batches = list(dataset.as_numpy_iterator() if _is_dataset(dataset) else dataset)
    if not batches:
        raise ValueError("The dataset gave no batches (is it empty, or smaller than one batch with drop_remainder?).")
    first = batches[0]
    if isinstance(first, dict):
        keys = list(first) if keys is None else keys
        return {key: np.concatenate([np.asarray(batch[key]) for batch in batches]) for key in keys}
    return tuple(np.concatenate([np.asarray(batch[i]) for batch in batches]) for i in range(len(first)))


def images_and_labels(images, labels=None):
    """`(images, labels)` from arrays, or from a dataset of `(images, labels)` / `{"images", "labels"}` batches."""
    if labels is None and (_is_dataset(images) or not hasattr(images, "shape")):
        collected = collect_batches(images)
        if isinstance(collected, dict):
            if "labels" not in collected:
                raise ValueError(f"A labelled dataset needs 'images' and 'labels'; its batches have {sorted(collected)}.")
            return image_inputs(collected), collected["labels"]
        if len(collected) != 2:
            raise ValueError(f"A labelled dataset gives (images, labels) batches; got {len(collected)} parts.")
        return collected
    if labels is None:
        raise ValueError("Pass labels with an array of images, or a dataset of (images, labels) batches.")
    return images, labels


def encode_token_ids(model, token_ids, batch_size=128):
    """L2-normalised text embeddings `(N, dim)` of int token ids `(N, L)`, as NumPy."""
    token_ids = np.asarray(token_ids, "int32")
    if len(token_ids) == 0:
        raise ValueError("encode_token_ids got no token ids.")
    return _predict_padded(_encoder(model, "texts"), token_ids, batch_size)


def pair_retrieval_recall(model, pairs, ks=(1, 5, 10), batch_size=128):
    """Recall@k on image-caption pairs: each image's caption is the text to find, and back.

    Captions with identical token ids are the same text, so each of them
    counts as relevant for all of their images.

    Args:
        model: a `SigLIP`.
        pairs: a `tf.data.Dataset` of `{"images", "token_ids"}` batches (what
            the readers give; NaFlex patch inputs in place of `"images"`) or
            a dict of those arrays.
        ks: the k values.
        batch_size: int, for encoding.

    Returns:
        `retrieval_recall`'s dict, plus `"pairs"`: how many were evaluated.

    Example:
    >>> pair_retrieval_recall(model, read_manifest("val.csv", tokenizer, preprocessor, 64,
    ...                                            training=False, drop_remainder=False))  # doctest: +SKIP
    """
    if not isinstance(pairs, dict):
        pairs = collect_batches(pairs)
    token_ids = np.asarray(pairs["token_ids"])
    _, text_of = np.unique(token_ids, axis=0, return_inverse=True)
    text_of = np.asarray(text_of).reshape(-1)
    relevance = text_of[:, None] == text_of[None, :]
    recall = retrieval_recall(
        encode_images(model, image_inputs(pairs), batch_size),
        encode_token_ids(model, token_ids, batch_size),
        relevance=relevance,
        ks=ks,
    )
    recall["pairs"] = len(token_ids)
    return recall


def encode_images(model, images, batch_size=128):
    """L2-normalised image embeddings `(N, dim)` as NumPy.

    Example:
    >>> embeddings = encode_images(model, images)  # doctest: +SKIP

    `images` may also be a dict of NaFlex inputs (`NaFlexImagePreprocessor`'s
    output), or a dataset of `{"images", ...}` (or NaFlex) batches.
    """
    if _is_dataset(images):
        images = collect_batches(images)
        images = images if isinstance(images, dict) else images[0]
    if isinstance(images, dict):
        images = image_inputs(images)
    if isinstance(images, dict):  # NaFlex: each input keeps its dtype
        images = {key: np.asarray(value) for key, value in images.items()}
    else:
        images = np.asarray(images, "float32")
    if count_images(images) == 0:
        raise ValueError("encode_images got no images.")
    return _predict_padded(_encoder(model, "images"), images, batch_size)


def encode_texts(model, tokenizer, texts, batch_size=128):
    """L2-normalised text embeddings `(N, dim)` of a list of strings.

    `tokenizer` maps a list of strings to int token ids `(batch, length)`
    (a `keras_siglip.SigLIPTokenizer`, or any callable).
    """
    texts = list(texts)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError("encode_texts needs a non-empty list of strings.")
    token_ids = np.asarray(keras.ops.convert_to_numpy(tokenizer(texts)), "int32")
    return _predict_padded(_encoder(model, "texts"), token_ids, batch_size)


def class_embeddings_from_prompts(prompt_embeddings, prompts_per_class):
    """Average each class's prompt embeddings and re-normalise: `(classes, dim)`.

    Args:
        prompt_embeddings: `(sum(prompts_per_class), dim)`, grouped by class.
        prompts_per_class: list of int.
    """
    prompt_embeddings = _to_numpy(prompt_embeddings)
    bounds = np.cumsum([0, *prompts_per_class])
    if bounds[-1] != len(prompt_embeddings) or min(prompts_per_class) < 1:
        raise ValueError(
            f"Got {len(prompt_embeddings)} prompt embeddings for classes with "
            f"{list(prompts_per_class)} prompts; every class needs at least one."
        )
    means = np.stack([prompt_embeddings[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return means / (np.linalg.norm(means, axis=-1, keepdims=True) + 1e-8)


def top_k_accuracy(scores, labels, ks=(1, 5)):
    """Share of rows whose true class is among the k highest scores, per k.

    A true class is in the top k when fewer than k other classes score at
    least as high as it (ties count against it).

    Args:
        scores: `(N, classes)`.
        labels: int `(N,)`.
        ks: the k values; k above the number of classes is allowed (always 1.0).

    Returns:
        `{k: accuracy}`.

    Example:
    >>> top_k_accuracy([[0.1, 0.9], [0.5, 0.5]], [1, 0], ks=(1, 2))
    {1: 0.5, 2: 1.0}
    """
    scores = _to_numpy(scores)
    labels = np.asarray(labels)
    ks = _check_ks(ks)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be (N, classes) and labels (N,); got {scores.shape} and {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}); got {labels.min()}..{labels.max()}.")
    true_scores = scores[np.arange(len(labels)), labels][:, None]
    others_at_least = (scores >= true_scores).sum(axis=1) - 1
    return {k: float(np.mean(others_at_least < k)) for k in ks}


def _recall(scores, relevance, ks):
    """Per row: a hit at k when fewer than k irrelevant columns score at least the best relevant one."""
    if not relevance.any(axis=1).all():
        raise ValueError("Every query needs at least one relevant item; some row of relevance is empty.")
    best_relevant = np.where(relevance, scores, -np.inf).max(axis=1, keepdims=True)
    rank = ((scores >= best_relevant) & ~relevance).sum(axis=1)
    return {k: float(np.mean(rank < k)) for k in ks}


def retrieval_recall(image_embeddings, text_embeddings, text_image_ids=None, relevance=None,
                     ks=(1, 5, 10)):
    """Recall@k for image->text and text->image retrieval.

    Image->text: an image is a hit at k when any of its captions is among the
    k best-scored texts. Text->image: a caption is a hit when (one of) its
    image(s) is among the k best-scored images. Ties count against the hit.

    Args:
        image_embeddings: `(images, dim)`.
        text_embeddings: `(texts, dim)`.
        text_image_ids: int `(texts,)`: the image each text describes (several
            texts may share an image, as COCO's five captions).
        relevance: alternatively a boolean `(images, texts)` matrix, for texts
            that describe several images (class-level captions).
        ks: the k values.

    Returns:
        `{"image_to_text": {k: recall}, "text_to_image": {k: recall}}`.

    Example:
    >>> import numpy as np
    >>> images = np.eye(2, dtype="float32")
    >>> texts = np.array([[1, 0], [0.6, 0.8], [0, 1]], "float32")
    >>> retrieval_recall(images, texts, text_image_ids=[0, 0, 1], ks=(1,))
    {'image_to_text': {1: 1.0}, 'text_to_image': {1: 0.6666666666666666}}
    """
    ks = _check_ks(ks)
    image_embeddings = _to_numpy(image_embeddings)
    text_embeddings = _to_numpy(text_embeddings)
    num_images, num_texts = len(image_embeddings), len(text_embeddings)
    if (text_image_ids is None) == (relevance is None):
        raise ValueError("Pass exactly one of text_image_ids and relevance.")
    if relevance is None:
        text_image_ids = np.asarray(text_image_ids)
        if text_image_ids.shape != (num_texts,):
            raise ValueError(
                f"text_image_ids needs one image index per text ({num_texts}); got shape "
                f"{text_image_ids.shape}."
            )
        if num_texts and (text_image_ids.min() < 0 or text_image_ids.max() >= num_images):
            raise ValueError(f"text_image_ids must lie in [0, {num_images}).")
        relevance = np.zeros((num_images, num_texts), bool)
        relevance[text_image_ids, np.arange(num_texts)] = True
    relevance = np.asarray(relevance, bool)
    if relevance.shape != (num_images, num_texts):
        raise ValueError(
            f"relevance must have shape (images, texts) = {(num_images, num_texts)}; got {relevance.shape}."
        )
    scores = image_embeddings @ text_embeddings.T
    return {
        "image_to_text": _recall(scores, relevance, ks),
        "text_to_image": _recall(scores.T, relevance.T, ks),
    }


class ZeroShotClassifier:
    """Classifies images by their similarity to prompts built from class names.

    Every (class, template) text is embedded; a class's embedding is the
    re-normalised mean of its prompts; an image is assigned the class of
    highest cosine similarity.

    Args:
        model: a `keras_siglip.SigLIP` (anything with `encode_images` and
            `encode_texts`).
        tokenizer: maps a list of strings to token ids.
        class_names: list of str, formatted into `templates`.
        templates: format strings with one `{}`; default the 80 CLIP templates
            plus `"{}"`.
        class_prompts: alternatively, per class a list of ready prompts
            (for names that need more than one slot, or another language).
        batch_size: int, for encoding.

    Class embeddings are computed on first use and again after `refresh()`
    (the callbacks call it, since training changes the text tower).

    Example:
    >>> classifier = ZeroShotClassifier(model, tokenizer, ["cat", "dog"])  # doctest: +SKIP
    >>> classifier.evaluate(images, labels)  # doctest: +SKIP
    {'top1': 0.93, 'top5': 1.0}
    """

    def __init__(self, model, tokenizer, class_names=None, templates=DEFAULT_TEMPLATES,
                 class_prompts=None, batch_size=128):
        if (class_names is None) == (class_prompts is None):
            raise ValueError("Pass exactly one of class_names and class_prompts.")
        if class_prompts is None:
            templates = list(templates)
            bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
            if not templates or bad:
                raise ValueError(f"Each template needs exactly one '{{}}'; got {bad or templates!r}.")
            class_prompts = [[template.format(name) for template in templates] for name in class_names]
        class_prompts = [list(prompts) for prompts in class_prompts]
        if len(class_prompts) < 2 or not all(class_prompts):
            raise ValueError("A zero-shot classifier needs at least two classes, each with a prompt.")
        self.model = model
        self.tokenizer = tokenizer
        self.class_prompts = class_prompts
        self.batch_size = batch_size
        self.class_embeddings = None

    @property
    def num_classes(self):
        return len(self.class_prompts)

    def refresh(self):
        """Re-embeds the prompts with the model's current weights."""
        prompts = [prompt for class_prompts in self.class_prompts for prompt in class_prompts]
        embeddings = encode_texts(self.model, self.tokenizer, prompts, self.batch_size)
        self.class_embeddings = class_embeddings_from_prompts(
            embeddings, [len(p) for p in self.class_prompts]
        )
        return self.class_embeddings

    def scores(self, images=None, image_embeddings=None):
        """Cosine similarity `(N, classes)` of images (or their embeddings) to each class."""
        if self.class_embeddings is None:
            self.refresh()
        if image_embeddings is None:
            image_embeddings = encode_images(self.model, images, self.batch_size)
        return _to_numpy(image_embeddings) @ self.class_embeddings.T

    def predict(self, images):
        """The predicted class index of each image."""
        return self.scores(images).argmax(axis=1)

    def evaluate(self, images, labels=None, ks=(1, 5), image_embeddings=None):
        """`{"top1": ..., "top5": ...}` on labelled images, with fresh class embeddings.

        `images` (an array, or a dict of NaFlex inputs) with `labels`, or a
        `tf.data.Dataset` of `(images, labels)` or `{"images", "labels"}`
        batches (NaFlex inputs in place of `"images"`) alone.
        """
        if image_embeddings is None:
            images, labels = images_and_labels(images, labels)
        self.refresh()
        accuracy = top_k_accuracy(self.scores(images, image_embeddings), labels, ks)
        return {f"top{k}": value for k, value in accuracy.items()}


class _PeriodicEvaluation(keras.callbacks.Callback):
    """Runs `self.evaluate()` every N epochs or steps and puts its results in `logs`.

    The latest results stay in every later batch's and epoch's logs, so the
    progress bar, `History` and a `TensorBoard` callback placed after this one
    record them like any metric.
    """

    def __init__(self, every_n_epochs=1, every_n_steps=None, prefix=""):
        super().__init__()
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be a positive int or None; got {every_n_steps!r}.")
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or every_n_epochs < 1):
            raise ValueError(f"every_n_epochs must be a positive int or None; got {every_n_epochs!r}.")
        if every_n_steps is None and every_n_epochs is None:
            raise ValueError("Set every_n_epochs or every_n_steps.")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.prefix = prefix
        self.latest = {}
        self._step = 0

    def evaluate(self):
        raise NotImplementedError

    @property
    def _epoch_only(self):
        # "val_" keys belong to TensorBoard's validation run, which is written per epoch only.
        return self.prefix.startswith("val_")

    def _run(self, logs):
        self.latest = {f"{self.prefix}{key}": value for key, value in self.evaluate().items()}
        if logs is not None and not self._epoch_only:
            logs.update(self.latest)

    def on_train_begin(self, logs=None):
        # Count global steps, so a run resumed by BackupAndRestore (placed
        # before this callback) keeps the same evaluation schedule.
        optimizer = getattr(self.model, "optimizer", None)
        self._step = 0 if optimizer is None else int(keras.ops.convert_to_numpy(optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_n_steps and self._step % self.every_n_steps == 0:
            self._run(logs)
        elif logs is not None and not self._epoch_only:
            logs.update(self.latest)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self._run(logs)
        if logs is not None:
            logs.update(self.latest)


class ZeroShotCallback(_PeriodicEvaluation):
    """Logs zero-shot top-k accuracy during `fit` (keys `{prefix}top1`, `{prefix}top5`).

    Args:
        classifier: a `ZeroShotClassifier` over the same model.
        images: float32 images in [-1, 1] (or a dict of NaFlex inputs), or a
            `tf.data.Dataset` of `(images, labels)` / `{"images", "labels"}`
            batches (then no `labels`); it is read once, when the callback
            is made.
        labels: int class of each image.
        ks: the k values.
        every_n_epochs: int or None.
        every_n_steps: int or None (both may be set).
        prefix: str, prepended to each key (default `"zero_shot_"`). A prefix
            starting with `"val_"` (e.g. `"val_zero_shot_"`) puts the results
            in the epoch logs only, which `keras.callbacks.TensorBoard` writes
            to its validation run beside `fit(validation_data=...)`'s
            `val_loss`.

    Example:
    >>> callback = ZeroShotCallback(ZeroShotClassifier(model, tokenizer, names),
    ...                             images, labels, every_n_steps=100)  # doctest: +SKIP
    >>> model.fit(batches, callbacks=[callback])  # doctest: +SKIP
    """

    def __init__(self, classifier, images, labels=None, ks=(1, 5), every_n_epochs=1, every_n_steps=None,
                 prefix="zero_shot_"):
        super().__init__(every_n_epochs, every_n_steps, prefix)
        images, labels = images_and_labels(images, labels)
        if count_images(images) != len(labels):
            raise ValueError(f"Got {count_images(images)} images and {len(labels)} labels.")
        self.classifier = classifier
        self.images = images
        self.labels = np.asarray(labels)
        self.ks = _check_ks(ks)

    def evaluate(self):
        self.model  # On JAX, reading `model` syncs the training state into the variables.
        return self.classifier.evaluate(self.images, self.labels, self.ks)


class RetrievalCallback(_PeriodicEvaluation):
    """Logs image->text and text->image Recall@k during `fit`.

    Keys: `{prefix}i2t_r{k}` and `{prefix}t2i_r{k}`.

    Args:
        tokenizer: maps a list of strings to token ids (unused with `pairs`).
        images: float32 images in [-1, 1].
        texts: list of str.
        text_image_ids: int per text, the image it describes; or
        relevance: boolean `(images, texts)` matrix (see `retrieval_recall`).
        ks: the k values.
        every_n_epochs, every_n_steps: when to run (both may be set).
        prefix: str (default `"retrieval_"`); a `"val_"` prefix logs to
            TensorBoard's validation run (see `ZeroShotCallback`).
        batch_size: int, for encoding.
        pairs: instead of images and texts, image-caption pairs: a
            `tf.data.Dataset` of `{"images", "token_ids"}` batches from a
            reader (read once, here) or a dict of arrays; scored by
            `pair_retrieval_recall`.

    Example:
    >>> callback = RetrievalCallback(tokenizer, images, captions,
    ...                              text_image_ids=owner, every_n_epochs=1)  # doctest: +SKIP
    """

    def __init__(self, tokenizer=None, images=None, texts=None, text_image_ids=None, relevance=None,
                 ks=(1, 5, 10), every_n_epochs=1, every_n_steps=None, prefix="retrieval_", batch_size=128,
                 pairs=None):
        super().__init__(every_n_epochs, every_n_steps, prefix)
        if (pairs is None) == (images is None or texts is None):
            raise ValueError("Pass either images and texts (with tokenizer), or pairs.")
        if pairs is not None and not isinstance(pairs, dict):
            pairs = collect_batches(pairs)
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.images = images
        self.texts = None if texts is None else list(texts)
        self.text_image_ids = text_image_ids
        self.relevance = relevance
        self.ks = _check_ks(ks)
        self.batch_size = batch_size

    def evaluate(self):
        model = self.model  # syncs the JAX training state
        if self.pairs is not None:
            recall = pair_retrieval_recall(model, self.pairs, self.ks, self.batch_size)
        else:
            recall = retrieval_recall(
                encode_images(model, self.images, self.batch_size),
                encode_texts(model, self.tokenizer, self.texts, self.batch_size),
                text_image_ids=self.text_image_ids,
                relevance=self.relevance,
                ks=self.ks,
            )
        logs = {f"i2t_r{k}": v for k, v in recall["image_to_text"].items()}
        logs.update({f"t2i_r{k}": v for k, v in recall["text_to_image"].items()})
        return logs
