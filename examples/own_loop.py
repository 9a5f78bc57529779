"""Your own PyTorch training loop writing the checkpoint contract (run by the test suite).

    python examples/own_loop.py runs/own        # trains widths 2 and 8 on digits, 20% noise
    ckpt-analyze run runs/own --probe metrics --probe spectrum --trust-code  # runs make_model
"""

import sys

import torch
from torch import nn

from ckpt_analyzer import RunWriter


def make_model(width, num_classes, in_channels):  # any factory(width, num_classes, in_channels)
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))


def main(out, widths=(2, 8), epochs=5):
    writer = RunWriter(out, model=make_model, dataset="digits", widths=widths, epochs=epochs,
                       label_noise=0.2, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    x, y = writer.x_train, writer.y_train             # normalized images, (noisy) labels
    for width in widths:
        torch.manual_seed(width)
        model = make_model(width, writer.num_classes, writer.in_channels)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        writer.save(model, width=width, epoch=0, step=0)  # the initialization
        step = 0
        for epoch in range(1, epochs + 1):
            model.train()
            for idx in torch.randperm(len(x)).split(64):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            writer.save(model, width=width, epoch=epoch, step=step, lr=0.1)
        writer.finish(width)                          # w<width>/done
    writer.close()                                    # <run>/done


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/own")
