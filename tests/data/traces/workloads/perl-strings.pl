use strict; use warnings;
my %h; my @lines;
for my $i (1..40000) {
  my $s = "";
  $s .= chr(97 + ($_ * $i) % 26) for 1..(($i % 200) + 1);
  push @lines, $s;
  $h{substr($s, 0, 3)} .= $s if $i % 3 == 0;
}
my $joined = join("\n", @lines);
my @w = split /[aeiou]+/, $joined;
my %count; $count{$_}++ for @w;
my $out = "";
$out .= "$_=$count{$_};" for sort keys %count;
print length($out), " ", scalar(keys %h), "\n";
