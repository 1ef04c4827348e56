"""Rounding error of Winograd convolution in bf16, simulated in PyTorch: why the bf16 plan
uses F(2x2,3x3) (kernels/winograd_bf16.rs) and not the F(4x4,3x3) of the f32 plan.

A 256 -> 256 channel 3x3 layer at 14x14 (ResNet-50's layer3) on ReLU'd Gaussian inputs
and He-scaled weights; errors are over the layer's largest output, against f64 direct
convolution. Transformed inputs and filters are rounded to bf16, products summed in f32.
Measured: direct bf16 2.3e-3, F(2x2) bf16 3.3e-3, F(4x4) bf16 4.8e-2, F(2x2) f32 2.9e-7.

    tools/reference/.venv/bin/python tools/reference/winograd_bf16_error.py
"""
import torch
torch.manual_seed(0)
def bf(t): return t.to(torch.bfloat16).to(torch.float32)
C,K,H=256,256,14
x=torch.relu(torch.randn(1,C,H,H))
w=torch.randn(K,C,3,3)*(2.0/(9*C))**0.5
exact=torch.nn.functional.conv2d(x.double(),w.double(),padding=1)
peak=exact.abs().max().item()
direct=torch.nn.functional.conv2d(bf(x),bf(w),padding=1)
print("bf16 direct max err/peak %.2e  rms/rms %.2e"%(((direct-exact).abs().max()/peak).item(), ((direct-exact).pow(2).mean().sqrt()/exact.pow(2).mean().sqrt()).item()))
def wino(m, BT, G, AT, round_in=True, round_w=True):
    r=3; a=m+r-1
    xp=torch.nn.functional.pad(x,(1,1,1,1))
    T=(H+m-1)//m
    xp=torch.nn.functional.pad(xp,(0,T*m+2-xp.shape[-1],0,T*m+2-xp.shape[-2]))
    # tiles
    d=xp.unfold(2,a,m).unfold(3,a,m)  # 1,C,T,T,a,a
    V=BT@d@BT.T
    U=G@w@G.T   # K,C,a,a
    if round_in: V=bf(V)
    if round_w: U=bf(U)
    M=torch.einsum('kcij,nctsij->nktsij',U,V)
    Y=AT@M@AT.T  # n,k,T,T,m,m
    Y=Y.permute(0,1,2,4,3,5).reshape(1,K,T*m,T*m)[:,:,:H,:H]
    return Y
BT2=torch.tensor([[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],dtype=torch.float32)
G2=torch.tensor([[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]],dtype=torch.float32)
AT2=torch.tensor([[1,1,1,0],[0,1,-1,-1]],dtype=torch.float32)
y=wino(2,BT2,G2,AT2)
print("bf16 F(2x2) max err/peak %.2e  rms/rms %.2e"%(((y-exact).abs().max()/peak).item(), ((y-exact).pow(2).mean().sqrt()/exact.pow(2).mean().sqrt()).item()))
y=wino(2,BT2,G2,AT2,False,False)
print("f32 F(2x2) max err/peak %.2e"%(((y-exact).abs().max()/peak).item()))
BT4=torch.tensor([[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]],dtype=torch.float32)
G4=torch.tensor([[1/4,0,0],[-1/6,-1/6,-1/6],[-1/6,1/6,-1/6],[1/24,1/12,1/6],[1/24,-1/12,1/6],[0,0,1]],dtype=torch.float32)
AT4=torch.tensor([[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]],dtype=torch.float32)
y=wino(4,BT4,G4,AT4)
print("bf16 F(4x4) max err/peak %.2e  rms/rms %.2e"%(((y-exact).abs().max()/peak).item(), ((y-exact).pow(2).mean().sqrt()/exact.pow(2).mean().sqrt()).item()))
