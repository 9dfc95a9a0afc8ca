"""Spiking side: the IF neuron, ANN -> SNN conversion, and the time-chunked simulation."""

from snnconv.snn.convert import convert
from snnconv.snn.neuron import Controller, IFNeuron, SimContext, if_step, per_channel
from snnconv.snn.simulate import SpikingNetwork, default_time_chunk

__all__ = ["convert", "Controller", "IFNeuron", "SimContext", "SpikingNetwork", "default_time_chunk", "if_step", "per_channel"]
