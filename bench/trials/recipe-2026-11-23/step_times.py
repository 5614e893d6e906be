import time, sys, torch, torch.nn.functional as F
import dqt_triton as dq
from dqt_triton import models
from bench.baselines import torch_ao_fake_quant_qat
torch.manual_seed(0)
shape=(3,32,32); batch=64
gen=torch.Generator().manual_seed(0)
codes=torch.randint(0,256,(batch,*shape),generator=gen,dtype=torch.uint8)
target=torch.randint(0,10,(batch,),generator=gen)
def mk(dynamic, gg="local"):
    m=dq.DQTModel.from_float(models.resnet18_cifar(10,3,64),shape,dynamic=dynamic,input_scale=1/255).train()
    if not dynamic: m.set_bits(8)
    m.gate_gradients=gg
    return m
def run(name, m, **kw):
    opt=torch.optim.SGD(m.parameters(),lr=1e-3,momentum=0.9); g=torch.Generator().manual_seed(0)
    ts=[]
    for i in range(4):
        t=time.perf_counter(); opt.zero_grad()
        if m.dynamic:
            out=m.dqt_loss(codes,target,generator=g,target_bitops=m.uniform_bitops(4),**kw); out["loss"].backward()
        else: F.cross_entropy(m(codes),target).backward()
        opt.step(); ts.append(time.perf_counter()-t)
    print(f"{name:50s} {sorted(ts[1:])[1]*1e3:8.0f} ms", flush=True)
which=sys.argv[1:]
if "qat" in which:
    q=torch_ao_fake_quant_qat(models.resnet18_cifar(10,3,64),shape).train(); real=codes.float()/255
    opt=torch.optim.SGD(q.parameters(),lr=1e-3); ts=[]
    for i in range(4):
        t=time.perf_counter(); opt.zero_grad(); F.cross_entropy(q(real),target).backward(); opt.step(); ts.append(time.perf_counter()-t)
    print(f"{'qat':50s} {sorted(ts[1:])[1]*1e3:8.0f} ms")
if "static" in which: run("static8", mk(False))
if "dynnone" in which: run("dynamic only, gate none, no imitation", mk(True,"none"), alpha=0, beta=1.0, imitation=0)
if "dynlocal" in which: run("dynamic only, gate local, no imitation", mk(True,"local"), alpha=0, beta=1.0, imitation=0)
if "recipe" in which: run("recipe", mk(True,"local"), alpha=1, beta=1, consistency_samples=32)
if "recipe0" in which: run("recipe sampled 0", mk(True,"local"), alpha=1, beta=1, consistency_samples=32, sampled_widths=0)
