"""Record a model trained by a plain PyTorch loop: the same store, the same renders as the Lightning callback.

Example::

    import torch
    from actrec.recorder import Recorder

    with Recorder(model, probes, "runs/plain/version_0") as rec:    # records step 0, the untrained model
        for step, (images, labels) in enumerate(loader, start=1):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(step, loss=loss)                            # after each optimizer step

    # actrec render runs/plain/version_0
"""

from actrec.recorder._recorder import Recorder, RecorderError

__all__ = ["Recorder", "RecorderError"]
