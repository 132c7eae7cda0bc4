"""Exact SAL of cnn on the first N CIFAR-10 subset images, per-layer (0) and batched (1) side by side.

    PYTHONPATH=. python benchmarks/sal_cpu_paths.py N ITERS 0,1,0,1
"""
import sys, time, torch
from ulviz import load_dataset, DataConfig, create_model
from ulviz.measure.sal import layer_sal
from torch.nn import functional as F
torch.set_num_threads(2)
n = int(sys.argv[1]); iters = int(sys.argv[2])
ds = load_dataset(DataConfig("cifar10", data_dir="data/cifar10-subset", train_limit=n))
torch.manual_seed(0)
net = create_model("cnn", ds.image_shape, ds.num_classes)
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
for i in range(0, n, 128):
    opt.zero_grad(); F.cross_entropy(net(ds.x_train[i:i+128]), ds.y_train[i:i+128]).backward(); opt.step()
net.eval()
for batched in sys.argv[3].split(","):
    t = time.perf_counter()
    r = layer_sal(net, (ds.x_train, ds.y_train), iters=iters, batch_size=128, device="cpu", batched=batched == "1")
    print("batched" if batched == "1" else "per-layer", f"{time.perf_counter()-t:.1f} s", flush=True)
